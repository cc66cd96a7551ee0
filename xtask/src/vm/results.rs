//! Reading the guest console: result lines, phase markers and kernel crashes.

use std::time::Duration;

/// One counted result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestResult {
    pub passed: bool,
    /// `<scenario>: <detail>`.
    pub what: String,
}

/// `KLIVE-RESULT PASS|FAIL <scenario>: <detail>` anywhere in a console line (a kernel message
/// may have been printed in front of it).
pub fn parse_result(line: &str) -> Option<TestResult> {
    let at = line.find("KLIVE-RESULT ")?;
    let rest = &line[at + "KLIVE-RESULT ".len()..];
    let (passed, what) = if let Some(what) = rest.strip_prefix("PASS ") {
        (true, what)
    } else if let Some(what) = rest.strip_prefix("FAIL ") {
        (false, what)
    } else {
        return None;
    };
    Some(TestResult {
        passed,
        what: what.trim().to_string(),
    })
}

/// Console lines that mean the guest kernel crashed or hit a bug.
pub fn is_kernel_crash(line: &str) -> bool {
    line.contains("Kernel panic")
        || line.contains("] BUG: ")
        || line.contains("] Oops: ")
        || line.contains("] general protection fault")
}

/// `phase1` for phase "1", `demo` for "demo".
pub fn label(phase: &str) -> String {
    if phase.bytes().all(|b| b.is_ascii_digit()) {
        format!("phase{phase}")
    } else {
        phase.to_string()
    }
}

/// Marker lines the guest's /init prints around the scenarios of a phase.
pub fn phase_start(phase: &str) -> String {
    format!("KLIVE-PHASE-START {phase}")
}

pub fn phase_end(phase: &str) -> String {
    format!("KLIVE-PHASE-END {phase}")
}

/// The results of one boot: every result line, a failure per kernel crash line, and a
/// failure when the guest did not reach the end of its scenarios.
pub fn tally(phase: &str, lines: &[String], timed_out: bool, limit: Duration) -> Vec<TestResult> {
    let mut out: Vec<TestResult> = Vec::new();
    for line in lines {
        if let Some(result) = parse_result(line) {
            out.push(result);
        } else if is_kernel_crash(line) {
            out.push(TestResult {
                passed: false,
                what: format!("kernel-{}: {}", label(phase), line.trim()),
            });
        }
    }
    let end = phase_end(phase);
    if !lines.iter().any(|l| l.trim_end().ends_with(&end)) {
        let why = if timed_out {
            format!(
                "killed after {} s without finishing its scenarios",
                limit.as_secs()
            )
        } else if lines
            .iter()
            .any(|l| l.trim_end().ends_with(&phase_start(phase)))
        {
            "the guest stopped in the middle of its scenarios".to_string()
        } else {
            "the guest never started its scenarios".to_string()
        };
        out.push(TestResult {
            passed: false,
            what: format!("boot-{}: {why}", label(phase)),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn result_lines_are_parsed_even_after_noise() {
        let r = parse_result("[    3.1] foo KLIVE-RESULT FAIL 10-apply: exit 5").unwrap();
        assert!(!r.passed);
        assert_eq!(r.what, "10-apply: exit 5");
        assert!(parse_result("KLIVE-RESULT PASS x: y").unwrap().passed);
        assert_eq!(parse_result("KLIVE-RESULT MAYBE x"), None);
        assert_eq!(parse_result("echo \"KLIVE-RESULT\""), None);
    }

    #[test]
    fn a_complete_phase_counts_its_lines() {
        let console = lines(
            "KLIVE-PHASE-START 1\nKLIVE-RESULT PASS a: one\nKLIVE-RESULT FAIL b: two\n\
             KLIVE-PHASE-END 1\n",
        );
        let results = tally("1", &console, false, Duration::from_secs(1));
        assert_eq!(results.iter().filter(|r| r.passed).count(), 1);
        assert_eq!(results.iter().filter(|r| !r.passed).count(), 1);
    }

    #[test]
    fn a_missing_end_or_a_panic_is_a_failure() {
        let console = lines("KLIVE-PHASE-START 2\nKLIVE-RESULT PASS a: one\n");
        let results = tally("2", &console, true, Duration::from_secs(300));
        assert!(
            results
                .iter()
                .any(|r| !r.passed && r.what.contains("killed after 300 s"))
        );

        let console = lines(
            "KLIVE-PHASE-START 1\n[ 1.0] Kernel panic - not syncing: oops\nKLIVE-PHASE-END 1\n",
        );
        let results = tally("1", &console, false, Duration::from_secs(1));
        assert_eq!(results.len(), 1);
        assert!(!results[0].passed);

        let results = tally("1", &[], false, Duration::from_secs(1));
        assert!(results[0].what.contains("never started"));
    }
}
