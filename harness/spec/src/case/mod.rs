//! Cases: YAML files under cases/, loaded and checked before any VM boots.
//!
//! [`model`] is the file as written; [`load`] parses it with serde-saphyr
//! (maintained, unlike the archived serde_yaml, and it reports line and column
//! for every syntax error and for any value we keep [`serde_saphyr::Spanned`])
//! and checks everything that can be known without a VM. The result is a
//! [`Case`]: plain data with defaults applied and regexes compiled.

pub mod load;
pub mod matrix;
pub mod model;

use crate::address::{Location, Target};
use crate::badblocks::Range;
use crate::expect::{RunExpect, SignalExpect};
use crate::machine::MachineSpec;
use crate::mce;
use crate::size::ByteSize;
use regex::Regex;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub use load::{load_dir, load_file, load_str};
pub use model::NamespaceMode;

/// The size of a namespace that takes a whole nfit_test region: only the VM
/// knows it, so bounds that depend on it are checked there.
pub const UNKNOWN_SIZE: ByteSize = ByteSize(u64::MAX);

/// Default time a step may take. Generous: under TCG `ndctl create-namespace`
/// for a devdax namespace with a memmap takes seconds.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// Default time from QEMU start to the agent's ready message.
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct Case {
    /// Unique, from the path under cases/: `namespaces/devdax-2m`.
    pub id: String,
    pub name: String,
    pub description: String,
    pub path: PathBuf,
    pub machine: MachineSpec,
    pub boot_timeout: Duration,
    pub namespaces: Vec<NamespaceSpec>,
    pub steps: Vec<Step>,
    /// Kernel log lines the oracle tolerates (see [`crate::oracle`]).
    pub allow_dmesg: Vec<Regex>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NamespaceSpec {
    pub name: String,
    /// Index into `machine.nvdimms`, or with `bus` into the bus's pmem
    /// regions (address order).
    pub nvdimm: usize,
    /// `None`: QEMU's NVDIMMs (the ACPI.NFIT bus); else an nfit_test bus.
    pub bus: Option<String>,
    /// nfit_test only: take the whole region by reconfiguring its existing
    /// namespace (`size` is then unknown before boot: [`UNKNOWN_SIZE`]).
    pub whole_region: bool,
    pub mode: NamespaceMode,
    pub size: ByteSize,
    pub align: Option<ByteSize>,
}

#[derive(Debug, Clone)]
pub struct Step {
    /// 1-based position in the case, for messages.
    pub number: usize,
    pub name: String,
    /// Line of the step in the case file.
    pub line: u32,
    pub action: Action,
    pub timeout: Duration,
    /// Expectations on a `run`'s result (defaults for other actions).
    pub expect: RunExpect,
    /// Each must match a kernel log line logged during the step.
    pub dmesg: Vec<Regex>,
    /// None may match a kernel log line logged during the step.
    pub dmesg_not: Vec<Regex>,
    /// `touch`: the minor faults expected.
    pub faults: Option<u64>,
    /// `consume`, `poison`, `signals`: the signal expected (or none).
    pub signal: Option<SignalExpect>,
    /// Run the step this many times.
    pub repeat: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Run a program in the guest. Strings may hold `${ns.NAME.FIELD}`.
    Run {
        argv: Vec<String>,
        stdin: Option<String>,
        env: BTreeMap<String, String>,
    },
    /// Inject a machine check at a location, then wait until QEMU reports
    /// it (QMP MEMORY_FAILURE) and the region lists the badblock.
    Inject {
        kind: mce::Kind,
        at: Location,
        cpu: u32,
    },
    /// Compare a region's or namespace's badblocks with `ranges`, through
    /// sysfs and `ndctl list --media-errors` both.
    ExpectBadblocks {
        target: Target,
        ranges: Vec<Range>,
        exact: bool,
    },
    /// mmap `[offset, offset + length)` of a devdax namespace as `name`.
    Map {
        name: String,
        namespace: String,
        offset: u64,
        length: u64,
    },
    Unmap {
        name: String,
    },
    Touch {
        map: String,
        offset: u64,
        length: u64,
        cpu: Option<u32>,
    },
    /// Read `offset` of a mapping on `cpu` while the lab injects a
    /// data-load machine check (SRAR) at that line on that CPU.
    Consume {
        map: String,
        offset: u64,
        cpu: u32,
    },
    /// MADV_HWPOISON the page at `offset` of a mapping.
    Poison {
        map: String,
        offset: u64,
        cpu: u32,
    },
    /// Collect SIGBUS signals the agent process received.
    Signals {
        wait: Duration,
    },
    /// prctl(PR_MCE_KILL) on the agent's main thread.
    MceKill {
        policy: model::MceKillPolicy,
    },
    /// An ndctl command on a bus or namespace: its result is checked like
    /// a `run`'s.
    Ndctl(NdctlOp),
}

impl Action {
    /// Whether the step runs a command whose result `expect` checks (exit,
    /// stdout, stderr, json) and which takes `stdin` and `env`.
    pub fn runs_command(&self) -> bool {
        match self {
            Action::Run { .. } | Action::Ndctl(_) => true,
            Action::Inject { .. }
            | Action::ExpectBadblocks { .. }
            | Action::Map { .. }
            | Action::Unmap { .. }
            | Action::Touch { .. }
            | Action::Consume { .. }
            | Action::Poison { .. }
            | Action::Signals { .. }
            | Action::MceKill { .. } => false,
        }
    }

    /// Whether the step reports a signal that `expect.signal` checks.
    pub fn reports_signal(&self) -> bool {
        match self {
            Action::Consume { .. } | Action::Poison { .. } | Action::Signals { .. } => true,
            Action::Run { .. }
            | Action::Ndctl(_)
            | Action::Inject { .. }
            | Action::ExpectBadblocks { .. }
            | Action::Map { .. }
            | Action::Unmap { .. }
            | Action::Touch { .. }
            | Action::MceKill { .. } => false,
        }
    }
}

/// The ndctl error-handling commands a case can name as steps.
#[derive(Debug, Clone, PartialEq)]
pub enum NdctlOp {
    InjectError {
        namespace: String,
        block: u64,
        count: u64,
        uninject: bool,
        /// Ask the platform to notify the kernel (ndctl's default), which
        /// then scrubs; `false` passes `--no-notify`.
        notify: bool,
        /// Aim at byte `.1` of file `.0` instead of `block` (resolved in the
        /// guest with FIEMAP).
        file: Option<(String, u64)>,
    },
    InjectStatus {
        namespace: String,
    },
    /// start-scrub, then wait-scrub (the step checks wait-scrub's output).
    Scrub {
        bus: String,
    },
    /// clear-errors; on success the lab also requires that no layer still
    /// lists a badblock in the namespace.
    Clear {
        namespace: String,
        scrub: bool,
    },
}

impl NdctlOp {
    /// The command line, given the kernel's name for the namespace.
    pub fn argv(&self, dev: impl Fn(&str) -> String) -> Vec<String> {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        match self {
            NdctlOp::InjectError {
                namespace,
                block,
                count,
                uninject,
                notify,
                ..
            } => {
                let mut a = v(&[
                    "ndctl",
                    "inject-error",
                    &format!("--block={block}"),
                    &format!("--count={count}"),
                ]);
                if *uninject {
                    a.push("--uninject".into());
                } else if !*notify {
                    a.push("--no-notify".into());
                }
                a.push(dev(namespace));
                a
            }
            NdctlOp::InjectStatus { namespace } => {
                v(&["ndctl", "inject-error", "--status", &dev(namespace)])
            }
            NdctlOp::Scrub { bus } => v(&["ndctl", "wait-scrub", bus]),
            NdctlOp::Clear { namespace, scrub } => {
                let mut a = v(&["ndctl", "clear-errors"]);
                if *scrub {
                    a.push("--scrub".into());
                }
                a.push(dev(namespace));
                a
            }
        }
    }
}

/// A problem in a case file, located precisely.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseError {
    pub path: PathBuf,
    pub line: u32,
    pub column: u32,
    pub message: String,
    /// The offending source line with a caret, when known.
    pub snippet: String,
}

impl fmt::Display for CaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.path.display(),
            self.line,
            self.column,
            self.message
        )?;
        if !self.snippet.is_empty() {
            write!(f, "\n{}", self.snippet)?;
        }
        Ok(())
    }
}
