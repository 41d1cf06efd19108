//! Why a case failed, as data: the runner builds these, and their `Display`
//! is the one place that renders them (the message a user, CI and the
//! report see). Nothing parses a message back.

use crate::oracle::Violation;
use std::fmt;
use std::path::PathBuf;

/// Where in a case a step is: `step 3 `clear` (round 2 of 5)
/// (cases/clear/x.yaml:17)`.
#[derive(Debug, Clone, PartialEq)]
pub struct StepAt {
    pub number: usize,
    pub name: String,
    /// `(round, of)` when the step repeats.
    pub round: Option<(u32, u32)>,
    pub file: PathBuf,
    pub line: u32,
}

impl fmt::Display for StepAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "step {} `{}`", self.number, self.name)?;
        if let Some((round, of)) = self.round {
            write!(f, " (round {round} of {of})")?;
        }
        write!(f, " ({}:{})", self.file.display(), self.line)
    }
}

/// Why a case failed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The case cannot run here (nfit_test missing, an unsafe id).
    #[error("{0}")]
    Preflight(String),
    #[error("cannot create {path}: {source}")]
    Artifacts {
        path: PathBuf,
        source: std::io::Error,
    },
    /// QEMU, the firmware tables or the agent did not come up.
    #[error("boot: {0}")]
    Boot(String),
    #[error("setup: {0}")]
    Setup(String),
    /// The error state after setup already broke an invariant.
    #[error("after boot and setup, the oracle found:\n  - {}", list(.0))]
    Baseline(Vec<Violation>),
    /// A step could not be carried out (the VM, the agent, a translation).
    #[error("{at}: {message}")]
    StepBroke { at: StepAt, message: String },
    /// A step ran and what came back is not what the case expects.
    #[error("{at} failed:\n  - {}\n{details}", problems.join("\n  - "))]
    StepFailed {
        at: StepAt,
        problems: Vec<String>,
        /// Commands, their output, the kernel log: for the reader.
        details: String,
    },
    /// The error state could not be read after a step.
    #[error("{label}: reading the error state: {message}")]
    Observe { label: String, message: String },
}

impl Failure {
    /// A step that could not be carried out, for `map_err`.
    pub fn broke(at: &StepAt) -> impl Fn(String) -> Failure + '_ {
        move |message| Failure::StepBroke {
            at: at.clone(),
            message,
        }
    }
}

fn list(v: &[Violation]) -> String {
    v.iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join("\n  - ")
}

/// A failed case: why, and where its evidence is.
#[derive(Debug, thiserror::Error)]
#[error("{failure}\nartifacts: {}", artifacts.display())]
pub struct CaseFailed {
    pub failure: Box<Failure>,
    pub artifacts: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(round: Option<(u32, u32)>) -> StepAt {
        StepAt {
            number: 2,
            name: "prints".into(),
            round,
            file: "cases/t.yaml".into(),
            line: 4,
        }
    }

    #[test]
    fn failures_render_in_one_place() {
        let f = CaseFailed {
            failure: Box::new(Failure::StepFailed {
                at: at(None),
                problems: vec![
                    "expected exit 0, got exit 3".into(),
                    "stdout does not match /^bye$/".into(),
                ],
                details: "  stdout:\n    hello\n".into(),
            }),
            artifacts: "/a/t".into(),
        };
        assert_eq!(
            f.to_string(),
            "step 2 `prints` (cases/t.yaml:4) failed:\n  - expected exit 0, got exit 3\n  - stdout does not match /^bye$/\n  \
             stdout:\n    hello\n\nartifacts: /a/t"
        );
        let broke = Failure::broke(&at(Some((3, 5))))("QEMU exited".into());
        assert_eq!(
            broke.to_string(),
            "step 2 `prints` (round 3 of 5) (cases/t.yaml:4): QEMU exited"
        );
        assert_eq!(
            Failure::Baseline(vec![Violation::KernelLog("[    1.0] WARNING: x".into())])
                .to_string(),
            "after boot and setup, the oracle found:\n  - kernel log: [    1.0] WARNING: x"
        );
    }
}
