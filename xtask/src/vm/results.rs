//! Reading the guest console: result lines, phase markers and kernel crashes.

use std::time::Duration;

/// What a result says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    /// The scenario does not apply to this kernel; the detail says why (lib.sh `skip`).
    Skip,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "SKIP",
        })
    }
}

/// One counted result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestResult {
    pub verdict: Verdict,
    /// `<scenario>: <detail>`.
    pub what: String,
}

impl TestResult {
    pub fn fail(what: String) -> Self {
        Self {
            verdict: Verdict::Fail,
            what,
        }
    }
}

/// `KLIVE-RESULT PASS|FAIL|SKIP <scenario>: <detail>` anywhere in a console line (a kernel
/// message may have been printed in front of it).
pub fn parse_result(line: &str) -> Option<TestResult> {
    let at = line.find("KLIVE-RESULT ")?;
    let rest = &line[at + "KLIVE-RESULT ".len()..];
    let (verdict, what) = if let Some(what) = rest.strip_prefix("PASS ") {
        (Verdict::Pass, what)
    } else if let Some(what) = rest.strip_prefix("FAIL ") {
        (Verdict::Fail, what)
    } else if let Some(what) = rest.strip_prefix("SKIP ") {
        (Verdict::Skip, what)
    } else {
        return None;
    };
    Some(TestResult {
        verdict,
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

/// `KLIVE-SCENARIO <name>`: /init starts the script `<name>.sh` of the phase.
pub fn scenario_started(line: &str) -> Option<&str> {
    let at = line.find("KLIVE-SCENARIO ")?;
    line[at + "KLIVE-SCENARIO ".len()..]
        .split_whitespace()
        .next()
}

/// The results of one boot: every result line, a failure per kernel crash line, a failure
/// when the guest did not reach the end of its scenarios, a failure for each `expected`
/// scenario (the scripts packed for the phase) that never started and for each started one
/// that was not expected.
pub fn tally(
    phase: &str,
    expected: &[String],
    lines: &[String],
    timed_out: bool,
    limit: Duration,
) -> Vec<TestResult> {
    let mut out: Vec<TestResult> = Vec::new();
    let mut started: Vec<&str> = Vec::new();
    for line in lines {
        if let Some(result) = parse_result(line) {
            out.push(result);
        } else if let Some(name) = scenario_started(line) {
            started.push(name);
        } else if is_kernel_crash(line) {
            out.push(TestResult::fail(format!(
                "kernel-{}: {}",
                label(phase),
                line.trim()
            )));
        }
    }
    let end = phase_end(phase);
    let finished = lines.iter().any(|l| l.trim_end().ends_with(&end));
    if !finished {
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
        out.push(TestResult::fail(format!("boot-{}: {why}", label(phase))));
    }
    for name in expected.iter().filter(|e| !started.contains(&e.as_str())) {
        let why = if finished {
            "the guest finished the phase without starting it"
        } else {
            "the boot ended before it started"
        };
        out.push(TestResult::fail(format!(
            "missing-{}: scenario {name} never ran ({why})",
            label(phase)
        )));
    }
    for name in started.iter().filter(|s| !expected.iter().any(|e| e == *s)) {
        out.push(TestResult::fail(format!(
            "unexpected-{}: scenario {name} ran but the harness did not pack it",
            label(phase)
        )));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|n| n.to_string()).collect()
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn result_lines_are_parsed_even_after_noise() {
        let r = parse_result("[    3.1] foo KLIVE-RESULT FAIL 10-apply: exit 5").unwrap();
        assert_eq!(r.verdict, Verdict::Fail);
        assert_eq!(r.what, "10-apply: exit 5");
        assert_eq!(
            parse_result("KLIVE-RESULT PASS x: y").unwrap().verdict,
            Verdict::Pass
        );
        let skip = parse_result("KLIVE-RESULT SKIP 70-build: no module for 6.12").unwrap();
        assert_eq!(skip.verdict, Verdict::Skip);
        assert_eq!(skip.what, "70-build: no module for 6.12");
        assert_eq!(parse_result("KLIVE-RESULT MAYBE x"), None);
        assert_eq!(parse_result("echo \"KLIVE-RESULT\""), None);
    }

    #[test]
    fn a_complete_phase_counts_its_lines() {
        let console = lines(
            "KLIVE-PHASE-START 1\nKLIVE-SCENARIO a\nKLIVE-RESULT PASS a: one\n\
             KLIVE-SCENARIO b\nKLIVE-RESULT FAIL b: two\nKLIVE-PHASE-END 1\n",
        );
        let results = tally("1", &names(&["a", "b"]), &console, false, SECOND);
        assert_eq!(results.len(), 2);
        let count = |v| results.iter().filter(|r| r.verdict == v).count();
        assert_eq!(count(Verdict::Pass), 1);
        assert_eq!(count(Verdict::Fail), 1);
    }

    #[test]
    fn a_missing_end_or_a_panic_is_a_failure() {
        let console = lines("KLIVE-PHASE-START 2\nKLIVE-SCENARIO a\nKLIVE-RESULT PASS a: one\n");
        let results = tally(
            "2",
            &names(&["a"]),
            &console,
            true,
            Duration::from_secs(300),
        );
        assert!(
            results
                .iter()
                .any(|r| r.verdict == Verdict::Fail && r.what.contains("killed after 300 s"))
        );

        let console = lines(
            "KLIVE-PHASE-START 1\n[ 1.0] Kernel panic - not syncing: oops\nKLIVE-PHASE-END 1\n",
        );
        let results = tally("1", &[], &console, false, SECOND);
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].verdict, Verdict::Fail);

        let results = tally("1", &[], &[], false, SECOND);
        assert!(results[0].what.contains("never started"));
    }

    #[test]
    fn a_scenario_that_never_started_or_was_not_packed_is_a_failure() {
        // Every result passes, the phase ends cleanly: still two failures.
        let console = lines(
            "KLIVE-PHASE-START fleet\nKLIVE-SCENARIO 10-a\nKLIVE-RESULT PASS 10-a: ok\n\
             KLIVE-SCENARIO 99-stale\nKLIVE-RESULT PASS 99-stale: ok\nKLIVE-PHASE-END fleet\n",
        );
        let results = tally("fleet", &names(&["10-a", "20-b"]), &console, false, SECOND);
        let failed: Vec<&str> = results
            .iter()
            .filter(|r| r.verdict == Verdict::Fail)
            .map(|r| r.what.as_str())
            .collect();
        assert_eq!(
            failed,
            [
                "missing-fleet: scenario 20-b never ran (the guest finished the phase without \
                 starting it)",
                "unexpected-fleet: scenario 99-stale ran but the harness did not pack it",
            ]
        );
        // A boot cut short names each scenario it did not reach.
        let console = lines("KLIVE-PHASE-START 1\nKLIVE-SCENARIO 10-a\n");
        let results = tally(
            "1",
            &names(&["10-a", "20-b", "30-c"]),
            &console,
            true,
            SECOND,
        );
        let missing: Vec<&str> = results
            .iter()
            .filter(|r| r.what.starts_with("missing-phase1"))
            .map(|r| r.what.as_str())
            .collect();
        assert_eq!(missing.len(), 2, "{missing:?}");
        assert!(missing[0].contains("20-b") && missing[0].contains("ended before"));
        assert_eq!(
            scenario_started("[ 2.0] KLIVE-SCENARIO 40-stall"),
            Some("40-stall")
        );
    }
}
