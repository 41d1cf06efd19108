//! The case file as written: serde types that mirror the YAML one to one.
//!
//! Unknown fields are refused everywhere (`deny_unknown_fields`) so that a
//! typo never silently turns an expectation off. Values that semantic
//! validation may complain about are wrapped in [`Spanned`] so the complaint
//! can name the line and column. [`super::load`] turns this into the checked
//! [`super::Case`] that the runner uses.

pub use super::step::StepEntry;
use crate::machine::{DsmFault, RootDsm};
pub use crate::namespace::Bus;
pub use crate::namespace::NamespaceMode;
use crate::size::{ByteSize, Timeout};
use serde::Deserialize;
use serde_saphyr::Spanned;

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
    /// The oracle's view checks whose message matches one of these do not
    /// fail the case: for a case that makes the views differ on purpose (a
    /// badblock written to a block device's own sysfs file, say).
    #[serde(default)]
    pub allow_oracle: Option<Spanned<Patterns>>,
    /// Boot this case's VM cold even when a VM snapshot of its machine and
    /// setup exists (and save none): for a case about boot itself, or to
    /// take the snapshot machinery out of a suspect result.
    #[serde(default)]
    pub cold_boot: bool,
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
    /// Guest RAM ranges given to the kernel as legacy (e820) persistent
    /// memory with `memmap=SIZE!AT`: the `e820` bus.
    #[serde(default)]
    pub e820_pmem: Vec<Spanned<E820Entry>>,
    /// How long to wait for the guest agent after QEMU starts.
    pub boot_timeout: Option<Timeout>,
    /// Who answers the NVDIMM root device's _DSM: `lab` (default: the lab's
    /// ACPI table, with ARS, error injection and clear-error) or `qemu`
    /// (QEMU's own table, which implements none of them).
    pub root_dsm: Option<Spanned<RootDsm>>,
    /// Firmware bugs for the lab's root _DSM to have (see
    /// [`crate::machine::DsmFault`]): `truncated-ars-status`.
    #[serde(default)]
    pub root_dsm_faults: Vec<Spanned<DsmFault>>,
    /// The poison model: every load of a poisoned line, by any program or
    /// the kernel, takes the machine check hardware would raise there. On
    /// by default where the platform can know the lines (QEMU NVDIMMs with
    /// the lab's root _DSM, CXL devices); `false` opts out.
    pub poison: Option<Spanned<bool>>,
    /// CXL type-3 devices with persistent capacity (a q35 machine with
    /// `cxl=on`; needs QEMU 8.1).
    #[serde(default)]
    pub cxl: Vec<Spanned<CxlEntry>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CxlEntry {
    /// Persistent capacity, a multiple of 256M.
    pub size: Spanned<ByteSize>,
    /// Label storage area; default 128K.
    pub lsa_size: Option<Spanned<ByteSize>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct E820Entry {
    /// Guest-physical start, inside guest RAM.
    pub at: Spanned<ByteSize>,
    pub size: Spanned<ByteSize>,
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
    /// CXL pmem regions, made with `cxl create-region` before the
    /// namespaces (which may live on them: `bus: cxl`).
    #[serde(default)]
    pub cxl_regions: Vec<Spanned<CxlRegionEntry>>,
    #[serde(default)]
    pub namespaces: Vec<Spanned<NamespaceEntry>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CxlRegionEntry {
    /// Indexes into machine.cxl, in interleave order; default `[0]`.
    pub devices: Option<Spanned<Vec<usize>>>,
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
    pub bus: Option<Spanned<Bus>>,
    /// With `bus`: which of its pmem regions, by address order (default 0).
    pub region: Option<Spanned<usize>>,
    pub mode: NamespaceMode,
    /// Required on QEMU NVDIMMs. On an nfit_test bus, leave it out to
    /// reconfigure the region's whole namespace (label-less regions cannot
    /// be divided).
    pub size: Option<Spanned<ByteSize>>,
    pub align: Option<Spanned<ByteSize>>,
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
    /// Machine checks the poison model raised while the step ran (loads of
    /// poisoned lines); needs `machine.poison`.
    pub machine_checks: Option<Spanned<u32>>,
    /// The command makes the guest kernel panic, with a console line that
    /// matches this regex (`run`/`sh`, the case's last step).
    pub panic: Option<Spanned<String>>,
    /// `consume`, `poison`, `signals`: the signal, or `none`.
    pub signal: Option<Spanned<SignalExpectEntry>>,
}

/// `expect.signal`: `none`, or what the signal must be.
#[derive(Debug, Clone)]
pub enum SignalExpectEntry {
    None,
    Some(SignalFields),
}

impl<'de> Deserialize<'de> for SignalExpectEntry {
    /// By hand rather than `untagged`: an unknown `code` inside the map then
    /// keeps its own message and place.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = SignalExpectEntry;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("`none` or a map with name, code, offset, lsb")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v {
                    "none" => Ok(SignalExpectEntry::None),
                    other => Err(E::custom(format!(
                        "signal `{other}`: write `none` or a map with name, code, offset, lsb"
                    ))),
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                SignalFields::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(SignalExpectEntry::Some)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct SignalFields {
    /// Default SIGBUS.
    pub name: Option<SignalName>,
    /// e.g. BUS_MCEERR_AR.
    pub code: Option<SignalCode>,
    /// si_addr as an offset into the mapping.
    pub offset: Option<ByteSize>,
    /// si_addr_lsb.
    pub lsb: Option<u16>,
}

/// The signals the lab reports.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
pub enum SignalName {
    #[serde(rename = "SIGBUS")]
    Sigbus,
}

/// SIGBUS's si_code values (include/uapi/asm-generic/siginfo.h).
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SignalCode {
    BusAdraln,
    BusAdrerr,
    BusObjerr,
    BusMceerrAr,
    BusMceerrAo,
}

impl SignalCode {
    /// The name the agent reports, e.g. `BUS_MCEERR_AR`.
    pub fn name(self) -> &'static str {
        match self {
            SignalCode::BusAdraln => "BUS_ADRALN",
            SignalCode::BusAdrerr => "BUS_ADRERR",
            SignalCode::BusObjerr => "BUS_OBJERR",
            SignalCode::BusMceerrAr => "BUS_MCEERR_AR",
            SignalCode::BusMceerrAo => "BUS_MCEERR_AO",
        }
    }
}

/// `expect.exit`: a status, or a word.
#[derive(Debug, Clone)]
pub enum ExitEntry {
    Code(i64),
    NonZero,
    Any,
}

impl<'de> Deserialize<'de> for ExitEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ExitEntry;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an exit status, `nonzero` or `any`")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(ExitEntry::Code(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(ExitEntry::Code(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v {
                    "nonzero" => Ok(ExitEntry::NonZero),
                    "any" => Ok(ExitEntry::Any),
                    other => Err(E::custom(format!(
                        "exit `{other}`: write a number, `nonzero` or `any`"
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// One regex or a list; each item of a list keeps its place, so that a bad
/// one is reported where it is written (an untagged enum would buffer the
/// list and lose the places).
#[derive(Debug, Clone)]
pub enum Patterns {
    One(String),
    Many(Vec<Spanned<String>>),
}

impl<'de> Deserialize<'de> for Patterns {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Patterns;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a regex or a list of regexes")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Patterns::One(v.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(p) = seq.next_element::<Spanned<String>>()? {
                    items.push(p);
                }
                Ok(Patterns::Many(items))
            }
        }
        d.deserialize_any(V)
    }
}

impl Patterns {
    /// Each pattern with its place (`at`: the field's, for a single one).
    pub fn items(&self, at: serde_saphyr::Location) -> Vec<(&str, serde_saphyr::Location)> {
        match self {
            Patterns::One(p) => vec![(p.as_str(), at)],
            Patterns::Many(v) => v.iter().map(|p| (p.value.as_str(), p.referenced)).collect(),
        }
    }
}
