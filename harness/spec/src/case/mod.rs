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
pub mod step;

use crate::expect::{RunExpect, SignalExpect};
use crate::machine::{MachineSpec, QemuNeed};
use crate::size::ByteSize;
use regex::Regex;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub use load::{load_dir, load_file, load_str};
pub use model::NamespaceMode;
pub use step::{Action, NdctlOp};

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
    /// CXL pmem regions setup makes, in order (`bus: cxl` namespaces name
    /// them by index).
    pub cxl_regions: Vec<CxlRegionSpec>,
    pub namespaces: Vec<NamespaceSpec>,
    pub steps: Vec<Step>,
    /// Kernel log lines the oracle tolerates (see [`crate::oracle`]).
    pub allow_dmesg: Vec<Regex>,
    /// View violations the oracle tolerates (never kernel-log ones).
    pub allow_oracle: Vec<Regex>,
    /// Never start from a VM snapshot (`cold_boot: true`).
    pub cold_boot: bool,
}

impl Case {
    /// The QEMU release the case needs (its machine's and its steps'), if
    /// more than the oldest the lab supports.
    pub fn needs_qemu(&self) -> Option<QemuNeed> {
        self.steps
            .iter()
            .map(|s| s.action.needs_qemu())
            .fold(self.machine.needs_qemu(), QemuNeed::max)
    }
}

/// A CXL pmem region over whole devices.
#[derive(Debug, Clone, PartialEq)]
pub struct CxlRegionSpec {
    /// Indexes into `machine.cxl`, in interleave order.
    pub devices: Vec<usize>,
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
    /// Machine checks the poison model raised during the step.
    pub machine_checks: Option<u32>,
    /// The command panics the guest, the console matching this.
    pub panic: Option<Regex>,
    /// `consume`, `poison`, `signals`: the signal expected (or none).
    pub signal: Option<SignalExpect>,
    /// Run the step this many times.
    pub repeat: u32,
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
