//! A case's verdict: what its run came to, weighed against the
//! known-failure list and, under `--equivalence`, the cold run's first
//! observation. One policy for the test runner (tests/lab.rs only turns it
//! into libtest's words), unit-tested here.

use super::report::Outcome;
use super::Passed;
use crate::known::KnownFailure;
use crate::observe::oracle;
use serde_json::Value;

/// What libtest is told.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Pass,
    Fail(String),
    /// Not run, or a known failure that failed: the reason.
    Ignore(String),
}

/// The verdict, the outcome the report records, and whether the case's
/// first observation was compared with a cold run's.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    pub verdict: Verdict,
    pub outcome: Outcome,
    pub compared_with_cold: bool,
}

/// Judge a case's run (`Err`: its failure, rendered). `known`: the
/// known-failure entry that covers the case on this kernel; `cold`: the
/// cold run's first observation of it.
pub fn judge(
    id: &str,
    result: Result<&Passed, String>,
    known: Option<&KnownFailure>,
    cold: Option<&Value>,
) -> Judgement {
    let compared_with_cold = result.is_ok() && cold.is_some();
    let result = result.and_then(|passed| {
        match cold.and_then(|c| oracle::view_difference(c, &passed.setup_view)) {
            None => Ok(passed),
            Some(diff) => Err(format!(
                "equivalence: after setup, this {} VM's oracle observation differs from the cold run's:\n{diff}",
                passed.start
            )),
        }
    });
    let (outcome, verdict) = match (result, known) {
        (Ok(_), None) => (Outcome::Passed, Verdict::Pass),
        (Ok(_), Some(k)) => {
            let m = format!(
                "unexpected pass: {id} is in known-failures.yaml ({}); remove the entry",
                k.reason
            );
            (Outcome::Failed(m.clone()), Verdict::Fail(m))
        }
        (Err(m), Some(k)) => {
            let first = m.lines().next().unwrap_or_default();
            let note = format!("known failure: {} (failed as expected: {first})", k.reason);
            (Outcome::KnownFailure(note.clone()), Verdict::Ignore(note))
        }
        (Err(m), None) => (Outcome::Failed(m.clone()), Verdict::Fail(m)),
    };
    Judgement {
        verdict,
        outcome,
        compared_with_cold,
    }
}

/// The line a passed case prints.
pub fn passed_line(id: &str, passed: &Passed, qemu_version: &str) -> String {
    let tables = passed
        .acpi_tables
        .map(|t| format!(", ACPI tables {:.3}s", t.as_secs_f64()))
        .unwrap_or_default();
    format!(
        "{id}: agent ready in {:.2}s ({}), case took {:.2}s ({}, QEMU {qemu_version}){tables}",
        passed.boot.as_secs_f64(),
        passed.start,
        passed.total.as_secs_f64(),
        passed.kernel_release,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use pmem_lab_env::events::Start;
    use serde_json::json;
    use std::time::Duration;

    fn passed(view: Value) -> Passed {
        Passed {
            boot: Duration::from_millis(200),
            total: Duration::from_secs(3),
            kernel_release: "6.12.118".into(),
            acpi_tables: None,
            start: Start::Restored,
            setup_view: view,
        }
    }

    fn known() -> KnownFailure {
        KnownFailure {
            case: "clear/x".into(),
            reason: "kernel bug 123".into(),
            kernel: None,
        }
    }

    #[test]
    fn a_pass_passes_and_a_failure_fails_with_its_message() {
        let p = passed(json!({}));
        let j = judge("a", Ok(&p), None, None);
        assert_eq!(j.verdict, Verdict::Pass);
        assert_eq!(j.outcome, Outcome::Passed);
        assert!(!j.compared_with_cold);
        let j = judge("a", Err("step 2 failed".into()), None, None);
        assert_eq!(j.verdict, Verdict::Fail("step 2 failed".into()));
    }

    #[test]
    fn a_known_failure_is_ignored_and_its_unexpected_pass_fails() {
        let k = known();
        let j = judge(
            "clear/x",
            Err("step 2 failed:\n  - details".into()),
            Some(&k),
            None,
        );
        assert_eq!(
            j.verdict,
            Verdict::Ignore(
                "known failure: kernel bug 123 (failed as expected: step 2 failed:)".into()
            )
        );
        assert!(matches!(j.outcome, Outcome::KnownFailure(_)));
        let p = passed(json!({}));
        let j = judge("clear/x", Ok(&p), Some(&k), None);
        assert!(
            matches!(&j.verdict, Verdict::Fail(m) if m.starts_with("unexpected pass: clear/x") && m.contains("remove the entry")),
            "{j:?}"
        );
    }

    #[test]
    fn a_restored_case_that_differs_from_the_cold_run_fails() {
        let cold = json!({"regions": [{"dev": "region0", "badblocks": []}]});
        let same = passed(cold.clone());
        let j = judge("a", Ok(&same), None, Some(&cold));
        assert_eq!(j.verdict, Verdict::Pass);
        assert!(j.compared_with_cold);
        let other = passed(json!({"regions": [{"dev": "region0", "badblocks": [8]}]}));
        let j = judge("a", Ok(&other), None, Some(&cold));
        assert!(
            matches!(&j.verdict, Verdict::Fail(m) if m.starts_with("equivalence: after setup, this restored VM's")),
            "{j:?}"
        );
        assert!(j.compared_with_cold);
    }
}
