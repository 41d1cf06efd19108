//! The machine a case asks for: CPUs, memory, NVDIMMs and their geometry,
//! CXL type-3 devices, who answers the NVDIMM root _DSM, latent errors. Pure data and the
//! arithmetic the loader needs; the harness turns it into QEMU's command line
//! (harness/src/vm/machine.rs).

use crate::size::{ByteSize, GIB};
use serde::Deserialize;

/// The clear-error unit the lab's ACPI table reports (`clear_err_unit`),
/// and the granularity of its error list.
pub const ERROR_UNIT: u64 = 256;
/// How many units of [`ERROR_UNIT`] the table's error list holds.
pub const MAX_ERROR_UNITS: u64 = 256;

/// The machine a case asks for, with defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct MachineSpec {
    pub cpus: u32,
    pub memory: ByteSize,
    pub nvdimms: Vec<NvdimmSpec>,
    /// Boot with the nfit_test modules instead of the in-tree NVDIMM stack.
    pub nfit_test: bool,
    /// Who answers the NVDIMM root _DSM (see [`crate::acpi`]).
    pub root_dsm: RootDsm,
    /// Deliberate misbehaviour of the lab's root _DSM.
    pub dsm_faults: Vec<DsmFault>,
    /// RAM ranges the kernel treats as legacy persistent memory
    /// (`memmap=SIZE!AT`, the e820 bus of nd_e820).
    pub e820_pmem: Vec<E820Pmem>,
    /// The poison model is armed (harness/src/poison): loads of poisoned
    /// lines raise machine checks.
    pub poison: bool,
    /// `poison` came from the default (the case did not set it): what
    /// PMEM_LAB_POISON_DEFAULT=off turns off.
    pub poison_by_default: bool,
    /// CXL type-3 devices with persistent capacity; a machine with any is a
    /// q35 with `cxl=on` (see [`CxlSpec`]).
    pub cxl: Vec<CxlSpec>,
}

/// A CXL type-3 memory device with persistent capacity and a label storage
/// area, behind its own root port of the lab's one CXL host bridge; one
/// fixed memory window (CFMWS) targets that bridge and covers every device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CxlSpec {
    pub size: ByteSize,
    pub lsa_size: ByteSize,
}

impl CxlSpec {
    /// QEMU sizes type-3 capacity and fixed memory windows in multiples of
    /// 256 MiB (hw/mem/cxl_type3.c, hw/cxl/cxl-host.c), the CXL HDM decoder
    /// granule.
    pub const GRANULE: u64 = 256 << 20;
    pub const DEFAULT_LSA_SIZE: ByteSize = ByteSize(128 << 10);
    /// The lab's bound on the label storage area: QEMU backs it with a file
    /// of that size and the kernel reads all of it when the memdev probes;
    /// a label area holds 256-byte labels, so this is thousands of them.
    pub const MAX_LSA_SIZE: u64 = 16 << 20;
    /// The most devices the lab's host bridge takes (one root port each).
    pub const MAX: usize = 4;
}

/// A QEMU release, as `major.minor` (what features are tied to).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct QemuVersion {
    pub major: u32,
    pub minor: u32,
}

impl QemuVersion {
    pub const fn new(major: u32, minor: u32) -> Self {
        QemuVersion { major, minor }
    }
}

impl std::fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// A QEMU release a case needs, and for what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QemuNeed {
    pub version: QemuVersion,
    pub why: &'static str,
}

impl QemuNeed {
    /// The lab's CXL machine: `cxl-type3,persistent-memdev=` (QEMU 8.0
    /// renamed `memdev` when volatile capacity came) and the poison list
    /// the cases read (QEMU 8.1: Get Poison List with injected records,
    /// QMP cxl-inject-poison).
    pub const CXL: QemuNeed = QemuNeed {
        version: QemuVersion::new(8, 1),
        why:
            "a CXL machine (cxl-type3 persistent-memdev, the poison list and QMP cxl-inject-poison)",
    };

    /// The later of two needs.
    pub fn max(a: Option<QemuNeed>, b: Option<QemuNeed>) -> Option<QemuNeed> {
        match (a, b) {
            (Some(a), Some(b)) => Some(if b.version > a.version { b } else { a }),
            (a, b) => a.or(b),
        }
    }

    /// Why a run on the QEMU `have` (its release, and the version it
    /// printed, `shown`) cannot take this case, if it cannot. The release
    /// comes from the environment crate's one version parser (the harness
    /// reads it there); a QEMU whose version was not understood takes no
    /// case that needs a release.
    pub fn unmet(&self, have: Option<QemuVersion>, shown: &str) -> Option<String> {
        let ok = have.is_some_and(|v| v >= self.version);
        (!ok).then(|| {
            format!(
                "needs QEMU >= {} for {}; this run's QEMU is {shown}: run it with a newer one, e.g. \
                 `cargo xtask lab --qemu $(cargo xtask deps --qemu-backports)`",
                self.version, self.why
            )
        })
    }
}

/// A range of guest RAM given to the kernel as e820 persistent memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Pmem {
    /// Guest-physical start.
    pub at: u64,
    pub size: u64,
}

impl E820Pmem {
    /// Start and size are multiples of this (libnvdimm's region alignment, so
    /// a namespace over the whole region can be fsdax or devdax at 2M).
    pub const ALIGN: u64 = 16 << 20;
    /// The lowest start: the kernel, the initramfs and early allocations
    /// live below.
    pub const LOWEST: u64 = 512 << 20;
    /// The highest end: QEMU's pc machine keeps guest RAM below 3G
    /// contiguous (above that it may split RAM around the 4G hole).
    pub const HIGHEST: u64 = 3 << 30;
}

/// A firmware bug the lab's root _DSM can be told to have, to see what the
/// kernel makes of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DsmFault {
    /// ARS status: `out_length` one record short of `num_records`.
    TruncatedArsStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RootDsm {
    /// The lab's ACPI table: ARS, error injection, clear-error.
    Lab,
    /// QEMU's table as it is: no root function but the query.
    Qemu,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NvdimmSpec {
    pub size: ByteSize,
    pub label_size: ByteSize,
    pub align: ByteSize,
    /// Latent media errors (lab root _DSM only): not part of QEMU's command
    /// line, baked into the lab's ACPI table.
    pub errors: Vec<LatentError>,
}

/// A media error present from boot, in bytes from the region's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatentError {
    pub offset: u64,
    pub length: u64,
}

impl LatentError {
    /// One sector, when a case gives no `length`.
    pub const DEFAULT_LENGTH: u64 = 512;
}

impl Default for MachineSpec {
    fn default() -> Self {
        MachineSpec {
            cpus: 1,
            memory: ByteSize(2 * GIB),
            nvdimms: Vec::new(),
            nfit_test: false,
            root_dsm: RootDsm::Lab,
            dsm_faults: Vec::new(),
            e820_pmem: Vec::new(),
            poison: false,
            poison_by_default: false,
            cxl: Vec::new(),
        }
    }
}

impl NvdimmSpec {
    pub const DEFAULT_LABEL_SIZE: ByteSize = ByteSize(128 << 10);
    pub const DEFAULT_ALIGN: ByteSize = ByteSize(2 << 20);
    /// Namespaces on a QEMU NVDIMM region are sized in multiples of the
    /// region's `align`, 16 MiB (ndctl: "align setting is 0x1000000 size ...
    /// is misaligned").
    pub const REGION_ALIGN: u64 = 16 << 20;

    /// Size of the libnvdimm region QEMU exposes: the label area comes off
    /// the end and the rest is rounded down to the backend alignment
    /// (measured: 1G with 128K labels -> 1022M).
    pub fn region_size(&self) -> u64 {
        let raw = self.size.bytes().saturating_sub(self.label_size.bytes());
        raw - raw % self.align.bytes().max(1)
    }

    /// Bytes namespaces can use: the region rounded down to REGION_ALIGN
    /// (measured: `available_size` 1008M on a 1G NVDIMM).
    pub fn usable(&self) -> u64 {
        let region = self.region_size();
        region - region % Self::REGION_ALIGN
    }
}

impl MachineSpec {
    /// The QEMU release this machine needs, if more than the oldest the lab
    /// supports (7.2).
    pub fn needs_qemu(&self) -> Option<QemuNeed> {
        (!self.cxl.is_empty()).then_some(QemuNeed::CXL)
    }

    /// The size of the CXL fixed memory window: every device's capacity,
    /// so one region can interleave them all.
    pub fn cxl_window(&self) -> u64 {
        let sum: u64 = self.cxl.iter().map(|c| c.size.bytes()).sum();
        sum.next_multiple_of(CxlSpec::GRANULE).max(CxlSpec::GRANULE)
    }

    /// Whether VMs of this machine boot with the lab's ACPI table.
    pub fn lab_root_dsm(&self) -> bool {
        self.root_dsm == RootDsm::Lab && !self.nvdimms.is_empty()
    }

    /// The machine as QEMU sees it: the same with the latent errors
    /// dropped (they live in the lab's table, not on QEMU's command line).
    /// What the cache of QEMU's own tables is keyed by.
    pub fn qemu_shape(&self) -> MachineSpec {
        let mut m = self.clone();
        for nv in &mut m.nvdimms {
            nv.errors.clear();
        }
        m.root_dsm = RootDsm::Qemu;
        m.dsm_faults.clear();
        m
    }

    /// Where each NVDIMM's region starts, relative to the first: QEMU places
    /// an NVDIMM at the first address after the previous one's region (the
    /// label area is not mapped) that its backend alignment allows. The
    /// device-memory base itself is 1G aligned, so these offsets tell every
    /// alignment that matters.
    pub fn region_offsets(&self) -> Vec<u64> {
        let mut at = 0u64;
        self.nvdimms
            .iter()
            .map(|nv| {
                let start = at.next_multiple_of(nv.align.bytes().max(1));
                at = start + nv.region_size();
                start
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_versions_order_by_major_then_minor() {
        assert!(QemuVersion::new(10, 0) > QemuVersion::new(8, 1));
        assert!(QemuVersion::new(8, 1) > QemuVersion::new(7, 2));
    }

    #[test]
    fn a_cxl_machine_needs_qemu_8_1_and_says_how_to_get_it() {
        let mut m = MachineSpec::default();
        assert_eq!(m.needs_qemu(), None);
        m.cxl.push(CxlSpec {
            size: ByteSize(256 << 20),
            lsa_size: CxlSpec::DEFAULT_LSA_SIZE,
        });
        let need = m.needs_qemu().unwrap();
        let why = need.unmet(Some(QemuVersion::new(7, 2)), "7.2.22").unwrap();
        assert!(
            why.starts_with("needs QEMU >= 8.1 for a CXL machine"),
            "{why}"
        );
        assert!(why.contains("this run's QEMU is 7.2.22"), "{why}");
        assert!(why.contains("--qemu-backports"), "{why}");
        assert_eq!(need.unmet(Some(QemuVersion::new(10, 0)), "10.0.2"), None);
        assert_eq!(need.unmet(Some(QemuVersion::new(8, 1)), "8.1.0"), None);
        assert!(need.unmet(None, "garbage").is_some());
    }

    #[test]
    fn the_cxl_window_covers_every_device_in_256m_steps() {
        let dev = |mb: u64| CxlSpec {
            size: ByteSize(mb << 20),
            lsa_size: CxlSpec::DEFAULT_LSA_SIZE,
        };
        let mut m = MachineSpec {
            cxl: vec![dev(256)],
            ..MachineSpec::default()
        };
        assert_eq!(m.cxl_window(), 256 << 20);
        m.cxl = vec![dev(256), dev(512)];
        assert_eq!(m.cxl_window(), 768 << 20);
    }
}
