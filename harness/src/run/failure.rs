//! Why a case failed, as data: the runner builds these, and their `Display`
//! is the one place that renders them (the message a user, CI and the
//! report see). Nothing parses a message back.

use super::preflight::Unmet;
use crate::boot::BootError;
use crate::guest::GuestError;
use crate::observe::oracle::Violation;
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
    Preflight(Unmet),
    #[error("cannot create {path}: {source}")]
    Artifacts {
        path: PathBuf,
        source: std::io::Error,
    },
    /// QEMU, the firmware tables or the agent did not come up.
    #[error("boot: {0}")]
    Boot(Box<BootError>),
    /// Namespaces, the VM snapshot saved after them, the poison model.
    #[error("setup: {0}")]
    Setup(Box<BootError>),
    /// A VM snapshot could not be used, or the restored guest is not the
    /// one the snapshot saved.
    #[error("restoring the VM snapshot {}: {source}{}\n(run the case with `cargo xtask lab --cold` to take snapshots out of it)",
        snapshot.display(),
        if *removed { "\n(the snapshot was removed: the next case of this machine and setup boots and saves a new one)" } else { "" })]
    Restored {
        snapshot: PathBuf,
        source: Box<BootError>,
        /// The snapshot did not load, and was removed.
        removed: bool,
    },
    /// The error state after setup already broke an invariant.
    #[error("after boot and setup, the oracle found:\n  - {}", list(.0))]
    Baseline(Vec<Violation>),
    /// A step could not be carried out (the VM, the agent, a translation).
    #[error("{at}: {source}")]
    StepBroke { at: StepAt, source: Box<GuestError> },
    /// A step ran and what came back is not what the case expects.
    #[error("{at} failed:\n  - {}\n{details}", problems.join("\n  - "))]
    StepFailed {
        at: StepAt,
        problems: Vec<String>,
        /// Commands, their output, the kernel log: for the reader.
        details: String,
    },
    /// The error state could not be read after a step.
    #[error("{label}: reading the error state: {source}")]
    Observe {
        label: String,
        source: Box<GuestError>,
    },
    /// The guest kernel panicked (or oopsed) where nothing expected it: a
    /// class of its own whatever the lab was doing, so that a bisection
    /// tells a kernel that dies from an ndctl error.
    #[error("{during}: guest kernel panicked or oopsed:\n{console}")]
    GuestPanic { during: Phase, console: String },
}

/// What the lab was doing when the guest panicked.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    Boot,
    Setup,
    Step(StepAt),
    /// Reading the error state after setup or a step (its label).
    Observe(String),
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Phase::Boot => f.write_str("boot"),
            Phase::Setup => f.write_str("setup"),
            Phase::Step(at) => write!(f, "{at}"),
            Phase::Observe(label) => write!(f, "{label}: reading the error state"),
        }
    }
}

impl Failure {
    /// This failure, or a guest panic when the guest kernel panicked on
    /// the way (`panic`: its console text, from [`crate::vm::Vm::panicked`]).
    /// A failure that judged the guest (an expectation, the oracle's rules)
    /// or never reached it stays what it is.
    pub fn or_panic(self, panic: Option<&str>) -> Failure {
        // The VM's record first; else the panic an error carries up from
        // the VM layer (a reply that never came because the guest died).
        let Some(console) = panic.map(str::to_string).or_else(|| self.carried_panic()) else {
            return self;
        };
        let during = match &self {
            Failure::Boot(_) => Phase::Boot,
            Failure::Setup(_) => Phase::Setup,
            Failure::StepBroke { at, .. } => Phase::Step(at.clone()),
            Failure::Observe { label, .. } => Phase::Observe(label.clone()),
            Failure::Preflight(_)
            | Failure::Artifacts { .. }
            | Failure::Restored { .. }
            | Failure::Baseline(_)
            | Failure::StepFailed { .. }
            | Failure::GuestPanic { .. } => return self,
        };
        Failure::GuestPanic { during, console }
    }

    /// The guest panic under a boot, setup, step or observation error.
    fn carried_panic(&self) -> Option<String> {
        match self {
            Failure::Boot(e) | Failure::Setup(e) => e.panic(),
            Failure::StepBroke { source, .. } | Failure::Observe { source, .. } => source.panic(),
            _ => None,
        }
        .map(str::to_string)
    }

    /// A boot failure.
    pub fn boot(e: impl Into<BootError>) -> Failure {
        Failure::Boot(Box::new(e.into()))
    }

    /// A setup failure.
    pub fn setup(e: impl Into<BootError>) -> Failure {
        Failure::Setup(Box::new(e.into()))
    }

    /// A step that could not be carried out, for `map_err`.
    pub fn broke(at: &StepAt) -> impl Fn(GuestError) -> Failure + '_ {
        move |source| Failure::StepBroke {
            at: at.clone(),
            source: Box::new(source),
        }
    }
}

impl Failure {
    /// The failure without what changes from run to run (numbers,
    /// addresses, times): two failures of one class are the same failure.
    /// `cargo xtask bisect` compares classes, so an unrelated failure on
    /// the way is not blamed on a commit.
    pub fn class(&self) -> String {
        let first = |s: &str| mask(s.lines().next().unwrap_or_default());
        match self {
            Failure::Preflight(_) => "preflight".into(),
            Failure::Artifacts { .. } => "artifacts".into(),
            Failure::Boot(e) => format!("boot: {}", first(&e.class())),
            Failure::Setup(e) => format!("setup: {}", first(&e.class())),
            Failure::Restored { .. } => "restore".into(),
            Failure::Baseline(v) => format!(
                "after setup: {}",
                v.first().map(|v| first(&v.to_string())).unwrap_or_default()
            ),
            Failure::StepBroke { at, source } => {
                format!("step {} broke: {}", at.number, first(&source.class()))
            }
            Failure::StepFailed { at, problems, .. } => format!(
                "step {} failed: {}",
                at.number,
                problems.first().map(|p| first(p)).unwrap_or_default()
            ),
            Failure::Observe { label, .. } => format!("reading the error state after {label}"),
            Failure::GuestPanic { during, .. } => match during {
                Phase::Boot => "guest panic during boot".into(),
                Phase::Setup => "guest panic during setup".into(),
                Phase::Step(at) => format!("guest panic in step {}", at.number),
                Phase::Observe(label) => {
                    format!("guest panic reading the error state after {label}")
                }
            },
        }
    }
}

/// Every run of digits (and the hex digits after `0x`) as `#`.
fn mask(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            if c == '0' && chars.peek() == Some(&'x') {
                chars.next();
            }
            while chars.peek().is_some_and(|d| d.is_ascii_hexdigit()) {
                chars.next();
            }
            out.push('#');
        } else {
            out.push(c);
        }
    }
    out
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
    use crate::vm::VmError;

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
    fn classes_keep_the_step_and_the_kind_not_the_numbers() {
        let f = |problem: &str| Failure::StepFailed {
            at: at(None),
            problems: vec![problem.into(), "second".into()],
            details: String::new(),
        };
        assert_eq!(
            f("expected exit 0, got exit 3").class(),
            "step 2 failed: expected exit #, got exit #"
        );
        assert_eq!(
            f("badblocks of region0 at 0x1f000: [8200]").class(),
            f("badblocks of region0 at 0x2000: [8]").class()
        );
        assert_ne!(
            f("expected exit 0, got exit 3").class(),
            f("stdout does not match /^ok$/").class()
        );
        let never = VmError::Timeout {
            what: "the agent".into(),
            after: std::time::Duration::from_secs(60),
            console: "[    1.0] x".into(),
        };
        assert_eq!(
            Failure::boot(never).class(),
            "boot: timeout waiting for the agent"
        );
    }

    #[test]
    fn a_guest_panic_is_a_class_of_its_own() {
        let panic = Some("Kernel panic - not syncing: Fatal exception");
        let setup = |e: GuestError| Failure::setup(e);
        let ndctl = || GuestError::Command {
            argv: "ndctl create-namespace --region=region0".into(),
            status: "exit 1".into(),
            output: "failed to create namespace: No space left on device".into(),
        };
        let closed = || {
            GuestError::from(VmError::AgentClosed {
                console: String::new(),
            })
        };
        // Without a panic a setup failure stays one, classed by what
        // failed; with it, whatever failed, it is a guest panic during
        // setup.
        assert_eq!(
            setup(ndctl().context("namespace `data`"))
                .or_panic(None)
                .class(),
            "setup: `ndctl create-namespace` failed"
        );
        assert_ne!(setup(ndctl()).class(), setup(closed()).class());
        let died = setup(closed()).or_panic(panic);
        assert_eq!(died.class(), "guest panic during setup");
        assert_eq!(
            died.to_string(),
            "setup: guest kernel panicked or oopsed:\nKernel panic - not syncing: Fatal exception"
        );
        assert_eq!(
            Failure::boot(closed()).or_panic(panic).class(),
            "guest panic during boot"
        );
        // The panic a wait saw, carried up in the error, counts the same.
        let carried = GuestError::from(VmError::Panic {
            console: "Kernel panic - not syncing: Fatal machine check".into(),
        });
        assert_eq!(
            setup(carried.context("ndctl list")).or_panic(None).class(),
            "guest panic during setup"
        );
        let step = Failure::broke(&at(None))(closed()).or_panic(panic);
        assert_eq!(step.class(), "guest panic in step 2");
        assert!(step
            .to_string()
            .starts_with("step 2 `prints` (cases/t.yaml:4): guest kernel panicked"));
        // A verdict on the guest stays a verdict.
        let failed = Failure::StepFailed {
            at: at(None),
            problems: vec!["expected exit 0, got exit 3".into()],
            details: String::new(),
        };
        assert_eq!(
            failed.or_panic(panic).class(),
            "step 2 failed: expected exit #, got exit #"
        );
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
        let broke = Failure::broke(&at(Some((3, 5))))(GuestError::Missing(
            crate::guest::Absent::Command,
            "QEMU exited".into(),
        ));
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
