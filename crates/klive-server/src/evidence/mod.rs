//! SOC 2 evidence: CVE feeds, the SLA policy, findings per (host, CVE) as of any date, and
//! the signed evidence pack.

pub mod charts;
pub mod cve;
pub mod findings;
pub mod policy;
pub mod report;
