//! Step 1, resolve: the command line checked and turned into what the build needs: module
//! identity, fixes and the translation units the diffs touch.

use anyhow::{Context, Result, bail};
use klive_format::release::{Fix, Severity};
use klive_format::{BuildId, PatchLevel};

use crate::{Cli, patches};

/// The checked inputs of one build.
#[derive(Debug)]
pub struct Plan {
    pub level: PatchLevel,
    pub build_id: BuildId,
    pub fixes: Vec<Fix>,
    /// Objects to compile (`fs/proc/cmdline.o`), sorted.
    pub tus: Vec<String>,
}

/// Takes the command line and gives the plan, or says which argument is wrong; a diff that
/// touches something a livepatch cannot carry stops here ([`crate::Stop`]).
pub fn resolve(cli: &Cli) -> Result<Plan> {
    if !klive_format::release::is_module_name(&cli.name) {
        bail!(
            "module name {:?} must start with klive_ and use [a-z0-9_]",
            cli.name
        );
    }
    let level = PatchLevel::new(cli.level).map_err(|e| anyhow::anyhow!("{e}"))?;
    let build_id: BuildId = cli.build_id.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let fixes: Vec<Fix> = cli
        .fixes
        .iter()
        .map(|f| parse_fix(f))
        .collect::<Result<_>>()?;
    let mut files = Vec::new();
    for p in &cli.patches {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        files.extend(patches::touched_files(&text));
    }
    files.sort();
    files.dedup();
    let tus = patches::translation_units(&files)?;
    Ok(Plan {
        level,
        build_id,
        fixes,
        tus,
    })
}

fn parse_fix(s: &str) -> Result<Fix> {
    let mut it = s.splitn(3, ':');
    let (Some(cve), Some(sev), Some(summary)) = (it.next(), it.next(), it.next()) else {
        bail!("--fix {s:?}: want CVE-ID:severity:summary");
    };
    let severity = match sev {
        "low" => Severity::Low,
        "medium" => Severity::Medium,
        "high" => Severity::High,
        "critical" => Severity::Critical,
        _ => bail!("--fix {s:?}: severity must be low, medium, high or critical"),
    };
    Ok(Fix {
        cve: cve.to_owned(),
        severity,
        cvss: None,
        summary: summary.to_owned(),
        reference: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixes_parse_and_bad_severity_is_named() {
        let f = parse_fix("CVE-2024-1234:high:proc: fix cmdline").unwrap();
        assert_eq!(f.summary, "proc: fix cmdline");
        assert!(parse_fix("CVE-2024-1234:urgent:x").is_err());
    }
}
