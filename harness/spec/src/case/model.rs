//! The case file as written: serde types that mirror the YAML one to one.
//!
//! Unknown fields are refused everywhere (`deny_unknown_fields`) so that a
//! typo never silently turns an expectation off. Values that semantic
//! validation may complain about are wrapped in [`Spanned`] so the complaint
//! can name the line and column. [`super::load`] turns this into the checked
//! [`super::Case`] that the runner uses.

pub use crate::namespace::NamespaceMode;
use crate::size::{ByteSize, Timeout};
use serde::Deserialize;
use serde_saphyr::Spanned;
use std::collections::BTreeMap;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    /// Defaults to the file's path under cases/ without `.yaml`.
    pub name: Option<Spanned<String>>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub machine: MachineSection,
    #[serde(default)]
    pub setup: SetupSection,
    pub steps: Spanned<Vec<Spanned<StepEntry>>>,
    /// Kernel log lines matching one of these regexes do not trip the
    /// oracle's "no BUG/Oops/WARNING/panic" rule.
    #[serde(default)]
    pub allow_dmesg: Option<Spanned<Patterns>>,
    /// Expanded before parsing (see [`super::matrix`]); ignored here.
    #[serde(default)]
    pub matrix: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MachineSection {
    pub cpus: Option<Spanned<u32>>,
    pub memory: Option<Spanned<ByteSize>>,
    #[serde(default)]
    pub nvdimms: Vec<Spanned<NvdimmEntry>>,
    /// Load the nfit_test modules (tools/testing/nvdimm) instead of the
    /// in-tree NVDIMM stack: adds the nfit_test.0 and nfit_test.1 buses.
    #[serde(default)]
    pub nfit_test: bool,
    /// How long to wait for the guest agent after QEMU starts.
    pub boot_timeout: Option<Timeout>,
    /// Who answers the NVDIMM root device's _DSM: `lab` (default: the lab's
    /// ACPI table, with ARS, error injection and clear-error) or `qemu`
    /// (QEMU's own table, which implements none of them).
    pub root_dsm: Option<Spanned<String>>,
    /// Firmware bugs for the lab's root _DSM to have (see
    /// [`crate::machine::DsmFault`]): `truncated-ars-status`.
    #[serde(default)]
    pub root_dsm_faults: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NvdimmEntry {
    pub size: Spanned<ByteSize>,
    pub label_size: Option<Spanned<ByteSize>>,
    /// Alignment of the host memory backend (`memory-backend-file,align=`).
    pub align: Option<Spanned<ByteSize>>,
    /// Latent media errors the lab's root _DSM reports from boot on (ARS).
    #[serde(default)]
    pub errors: Vec<Spanned<LatentErrorEntry>>,
}

/// A media error present before boot, at an offset into the NVDIMM's region.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatentErrorEntry {
    /// Bytes from the region's first byte; a multiple of 256.
    pub offset: Spanned<ByteSize>,
    /// Default 512 (one sector); a multiple of 256.
    pub length: Option<Spanned<ByteSize>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SetupSection {
    #[serde(default)]
    pub namespaces: Vec<Spanned<NamespaceEntry>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceEntry {
    pub name: Spanned<String>,
    /// Index into machine.nvdimms.
    #[serde(default)]
    pub nvdimm: Option<Spanned<usize>>,
    /// An nfit_test bus (`nfit_test.0`, `nfit_test.1`) instead of QEMU's
    /// NVDIMMs; needs `machine.nfit_test`.
    pub bus: Option<Spanned<String>>,
    /// With `bus`: which of its pmem regions, by address order (default 0).
    pub region: Option<Spanned<usize>>,
    pub mode: NamespaceMode,
    /// Required on QEMU NVDIMMs. On an nfit_test bus, leave it out to
    /// reconfigure the region's whole namespace (label-less regions cannot
    /// be divided).
    pub size: Option<Spanned<ByteSize>>,
    pub align: Option<Spanned<ByteSize>>,
}

/// The step kinds, each once: its YAML key, the type of its value, and the
/// [`ActionEntry`] variant the loader matches on. The macro writes the
/// [`StepEntry`] fields and [`StepEntry::actions`], so a kind added here is
/// a field of the YAML and a variant every `match` must handle; the
/// compiler then points at each place that needs it (docs/architecture.md,
/// "Adding a step kind").
macro_rules! step_kinds {
    ($($(#[$doc:meta])* $key:ident: $ty:ty => $variant:ident,)*) => {
        /// One step. Exactly one action field must be present; the other
        /// fields qualify it.
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct StepEntry {
            pub name: Option<String>,
            $($(#[$doc])* pub $key: Option<Spanned<$ty>>,)*
            pub stdin: Option<Spanned<String>>,
            #[serde(default)]
            pub env: BTreeMap<String, Spanned<String>>,
            pub timeout: Option<Timeout>,
            /// Run the step this many times (each must pass).
            pub repeat: Option<Spanned<u32>>,
            #[serde(default)]
            pub expect: ExpectEntry,
        }

        /// The action of a step, by kind.
        #[derive(Debug, Clone, Copy)]
        pub enum ActionEntry<'a> {
            $($variant(&'a Spanned<$ty>),)*
        }

        impl StepEntry {
            /// Every step kind's YAML key, in declaration order.
            pub const KINDS: &'static [&'static str] = &[$(stringify!($key)),*];

            /// The action fields present, with their keys.
            pub fn actions(&self) -> Vec<(&'static str, ActionEntry<'_>)> {
                let mut found = Vec::new();
                $(if let Some(v) = &self.$key {
                    found.push((stringify!($key), ActionEntry::$variant(v)));
                })*
                found
            }
        }
    };
}

step_kinds! {
    /// Program and arguments, run by the guest agent without a shell.
    run: Vec<Spanned<String>> => Run,
    /// A guest shell script, run as `sh -c SCRIPT`.
    sh: String => Sh,
    /// Inject a machine check (see [`crate::mce`]).
    inject: InjectEntry => Inject,
    /// Check the badblocks of a region or namespace.
    expect_badblocks: BadblocksEntry => ExpectBadblocks,
    /// mmap a range of a devdax namespace in the agent, under a name.
    map: MapEntry => Map,
    /// munmap a named mapping.
    unmap: String => Unmap,
    /// Read every 4 KiB of a window of a mapping, counting minor faults.
    touch: TouchEntry => Touch,
    /// Read a line of a mapping in a tight loop while the lab injects a
    /// data-load machine check (SRAR) there.
    consume: ConsumeEntry => Consume,
    /// madvise(MADV_HWPOISON) a page of a mapping (software injection).
    poison: ConsumeEntry => Poison,
    /// Collect the SIGBUS signals the agent itself received (early kill).
    signals: SignalsEntry => Signals,
    /// prctl(PR_MCE_KILL) for the agent: `early`, `late` or `default`.
    mce_kill: MceKillPolicy => MceKill,
    /// `ndctl inject-error` on a namespace.
    inject_error: InjectErrorEntry => InjectError,
    /// `ndctl start-scrub` then `ndctl wait-scrub` on a bus.
    scrub: String => Scrub,
    /// `ndctl clear-errors` on a namespace.
    clear: ClearEntry => Clear,
}

/// `mce_kill`'s policies (prctl PR_MCE_KILL): a closed vocabulary, so serde
/// refuses anything else where it is written.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MceKillPolicy {
    Early,
    Late,
    Default,
}

impl MceKillPolicy {
    pub fn name(self) -> &'static str {
        match self {
            MceKillPolicy::Early => "early",
            MceKillPolicy::Late => "late",
            MceKillPolicy::Default => "default",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapEntry {
    pub name: Spanned<String>,
    pub namespace: Spanned<String>,
    /// Offset into the dax device; a multiple of its align.
    #[serde(default)]
    pub offset: Option<Spanned<ByteSize>>,
    pub length: Spanned<ByteSize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TouchEntry {
    pub map: Spanned<String>,
    #[serde(default)]
    pub offset: Option<Spanned<ByteSize>>,
    /// Default: to the end of the mapping.
    pub length: Option<Spanned<ByteSize>>,
    pub cpu: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumeEntry {
    pub map: Spanned<String>,
    /// Offset into the mapping.
    pub offset: Spanned<ByteSize>,
    /// CPU the reader is pinned to, and the machine check goes to. Default 0.
    pub cpu: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectErrorEntry {
    pub namespace: Spanned<String>,
    /// 512-byte block of the namespace data (ndctl's --block) ...
    pub block: Option<Spanned<u64>>,
    /// ... or the block holding byte `offset` of this file (on an fsdax
    /// mount of the namespace), found with FIEMAP when the step runs.
    pub file: Option<Spanned<String>>,
    pub offset: Option<Spanned<ByteSize>>,
    /// Number of blocks (default 1).
    pub count: Option<Spanned<u64>>,
    /// Remove the injected error instead (`--uninject`).
    #[serde(default)]
    pub uninject: bool,
    /// `false`: `--no-notify`, the platform does not tell the kernel, which
    /// learns of the error at the next scrub. Default true (ndctl waits for
    /// the scrub the notification starts).
    pub notify: Option<Spanned<bool>>,
    /// Only list the injected errors (`--status`).
    #[serde(default)]
    pub status: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClearEntry {
    pub namespace: Spanned<String>,
    /// Scrub first (`--scrub`).
    #[serde(default)]
    pub scrub: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalsEntry {
    /// How long to wait for a first signal (default 2s).
    pub wait: Option<Timeout>,
}

/// A machine check at a place in case terms: exactly one of `namespace` or
/// `region`, and an `offset`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectEntry {
    /// `scrub` (SRAO) for now; `load` (SRAR) needs a reader: see `consume`.
    pub kind: Spanned<String>,
    pub namespace: Option<Spanned<String>>,
    /// A QEMU NVDIMM index: the location is in that NVDIMM's region.
    pub region: Option<Spanned<usize>>,
    pub offset: Spanned<ByteSize>,
    /// `data` (default): offset 0 is the first byte of the namespace's data;
    /// `start`: its first byte, metadata included.
    pub from: Option<Spanned<String>>,
    /// vCPU that takes the machine check (default 0).
    pub cpu: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BadblocksEntry {
    pub namespace: Option<Spanned<String>>,
    pub region: Option<Spanned<usize>>,
    /// Sectors (512 bytes) in the frame of the namespace data or the region.
    #[serde(default)]
    pub sectors: Vec<SectorEntry>,
    /// Byte offsets in the same frame; each names the sector holding it.
    #[serde(default)]
    pub offsets: Vec<ByteSize>,
    /// `exact` (default) or `contains`.
    pub r#match: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum SectorEntry {
    One(u64),
    Range { sector: u64, count: u64 },
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ExpectEntry {
    /// Exit status; default 0.
    pub exit: Option<Spanned<ExitEntry>>,
    pub stdout: Option<Spanned<Patterns>>,
    pub stderr: Option<Spanned<Patterns>>,
    /// Regexes that must not match stdout.
    pub stdout_not: Option<Spanned<Patterns>>,
    /// stdout parsed as JSON must contain this (see [`crate::json_subset`]).
    pub json: Option<Spanned<serde_json::Value>>,
    /// Each must match a kernel log line logged while the step ran.
    pub dmesg: Option<Spanned<Patterns>>,
    /// None may match a kernel log line logged while the step ran.
    pub dmesg_not: Option<Spanned<Patterns>>,
    /// `touch`: minor faults the touch took.
    pub faults: Option<Spanned<u64>>,
    /// `consume`, `poison`, `signals`: the signal, or `none`.
    pub signal: Option<Spanned<SignalExpectEntry>>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum SignalExpectEntry {
    /// `none`
    Word(String),
    Some(SignalFields),
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct SignalFields {
    /// Default SIGBUS.
    pub name: Option<String>,
    /// e.g. BUS_MCEERR_AR.
    pub code: Option<String>,
    /// si_addr as an offset into the mapping.
    pub offset: Option<ByteSize>,
    /// si_addr_lsb.
    pub lsb: Option<u16>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum ExitEntry {
    Code(i32),
    /// `any` or `nonzero`.
    Word(String),
}

#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum Patterns {
    One(String),
    Many(Vec<String>),
}

impl Patterns {
    pub fn as_slice(&self) -> &[String] {
        match self {
            Patterns::One(p) => std::slice::from_ref(p),
            Patterns::Many(v) => v,
        }
    }
}
