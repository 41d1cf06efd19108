//! The machine a case asks for: CPUs, memory, NVDIMMs and their geometry,
//! who answers the NVDIMM root _DSM, latent errors. Pure data and the
//! arithmetic the loader needs; the harness turns it into QEMU's command line
//! (harness/src/machine.rs).

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
