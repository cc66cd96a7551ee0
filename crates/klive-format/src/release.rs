//! A release: one cumulative livepatch module for one kernel build at one patch level, with
//! the fixes it carries. The builder writes this manifest; the server accepts it; the agent
//! checks it against the running kernel before anything reaches the kernel.

use serde::{Deserialize, Serialize};

use crate::{BuildId, PatchLevel};

/// Version of the manifest format; bumped on incompatible changes.
pub const MANIFEST_FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseManifest {
    pub format: u32,
    /// Module name as the kernel will know it (starts with `klive_`).
    pub module_name: String,
    pub level: PatchLevel,
    pub kernel: TargetKernel,
    pub module: ModuleDigest,
    #[serde(default)]
    pub fixes: Vec<Fix>,
}

/// The kernel build a release is for. Only `build_id` decides; the rest is descriptive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetKernel {
    pub build_id: BuildId,
    /// `uname -r`, e.g. `6.1.0-56-amd64`.
    pub release: String,
    /// Distribution package version, e.g. `6.1.192-2`, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distro: Option<String>,
    pub arch: String,
}

/// The module file: its digest is what the trust chain signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleDigest {
    /// File name of the `.ko`.
    pub file: String,
    /// Lowercase hex SHA-256 of the file.
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

/// One fix carried by a release.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fix {
    /// `CVE-YYYY-NNNN...`
    pub cve: String,
    pub severity: Severity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cvss: Option<f32>,
    pub summary: String,
    /// Upstream commit or advisory URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

/// Why a manifest is not acceptable, beyond JSON syntax.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ManifestError {
    #[error(
        "manifest format {0} is not supported (this build reads format {MANIFEST_FORMAT}); upgrade klive"
    )]
    Format(u32),
    #[error(
        "module name {0:?} must start with `klive_` and use only [a-z0-9_], at most 55 characters"
    )]
    ModuleName(String),
    #[error("module sha256 {0:?} is not 64 hex digits")]
    Digest(String),
    #[error("fix id {0:?} is not a CVE id (CVE-YYYY-NNNN)")]
    Cve(String),
    #[error("cvss {0} is outside 0.0..=10.0")]
    Cvss(f32),
    #[error(transparent)]
    Text(#[from] crate::text::TextError),
}

impl ReleaseManifest {
    /// Checks the fields serde cannot: call after parsing any manifest from outside.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.format != MANIFEST_FORMAT {
            return Err(ManifestError::Format(self.format));
        }
        if !is_module_name(&self.module_name) {
            return Err(ManifestError::ModuleName(self.module_name.clone()));
        }
        let d = &self.module.sha256;
        if d.len() != 64
            || !d
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(ManifestError::Digest(d.clone()));
        }
        use crate::text::check;
        check("kernel release", &self.kernel.release, 128)?;
        check("kernel arch", &self.kernel.arch, 32)?;
        for v in [&self.kernel.version, &self.kernel.distro]
            .into_iter()
            .flatten()
        {
            check("kernel version or distro", v, 256)?;
        }
        check("module file", &self.module.file, 255)?;
        for fix in &self.fixes {
            check("fix summary", &fix.summary, 2000)?;
            if let Some(r) = &fix.reference {
                check("fix reference", r, 2000)?;
            }
            if !is_cve_id(&fix.cve) {
                return Err(ManifestError::Cve(fix.cve.clone()));
            }
            if let Some(c) = fix.cvss
                && !(0.0..=10.0).contains(&c)
            {
                return Err(ManifestError::Cvss(c));
            }
        }
        Ok(())
    }
}

/// A kernel module name klive may use (the kernel allows 55 usable bytes).
pub fn is_module_name(name: &str) -> bool {
    name.starts_with(crate::modinfo::MODULE_PREFIX)
        && name.len() <= 55
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// `CVE-YYYY-NNNN` with at least four digits in the sequence part.
pub fn is_cve_id(id: &str) -> bool {
    let Some(rest) = id.strip_prefix("CVE-") else {
        return false;
    };
    let Some((year, seq)) = rest.split_once('-') else {
        return false;
    };
    year.len() == 4
        && year.bytes().all(|b| b.is_ascii_digit())
        && seq.len() >= 4
        && seq.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ReleaseManifest {
        serde_json::from_str(
            r#"{
              "format": 1,
              "module_name": "klive_6_1_0_56_l2",
              "level": 2,
              "kernel": {"build_id": "3e0c8f6a1b2c4d5e", "release": "6.1.0-56-amd64", "arch": "x86_64"},
              "module": {"file": "klive_6_1_0_56_l2.ko", "sha256": "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "size": 12345},
              "fixes": [{"cve": "CVE-2024-26581", "severity": "high", "cvss": 7.8, "summary": "netfilter: nft_set_rbtree: skip end interval element from gc"}]
            }"#,
        )
        .unwrap()
    }

    #[test]
    fn good_manifest_validates_and_round_trips() {
        let m = sample();
        m.validate().unwrap();
        let again: ReleaseManifest =
            serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(m, again);
    }

    #[test]
    fn bad_fields_are_named() {
        let mut m = sample();
        m.fixes[0].cve = "CVE-24-1".into();
        assert_eq!(m.validate(), Err(ManifestError::Cve("CVE-24-1".into())));
        let mut m = sample();
        m.module_name = "evil/../x".into();
        assert!(matches!(m.validate(), Err(ManifestError::ModuleName(_))));
        let mut m = sample();
        m.module.sha256 = "ABC".into();
        assert!(matches!(m.validate(), Err(ManifestError::Digest(_))));
        let mut m = sample();
        m.fixes[0].cvss = Some(11.0);
        assert!(matches!(m.validate(), Err(ManifestError::Cvss(_))));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let text = serde_json::to_string(&sample())
            .unwrap()
            .replacen('{', "{\"surprise\":1,", 1);
        assert!(serde_json::from_str::<ReleaseManifest>(&text).is_err());
    }
}
