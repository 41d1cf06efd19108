//! Namespace modes: the one vocabulary both the case model and the address
//! map need (its own module so neither imports the other).

use serde::Deserialize;

#[derive(Debug, Deserialize, serde::Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NamespaceMode {
    Raw,
    Fsdax,
    Devdax,
    /// BTT: a block translation table over the namespace (atomic sectors);
    /// its block device maps each LBA through the BTT's own map.
    Sector,
}

impl NamespaceMode {
    /// The name `ndctl create-namespace --mode` takes.
    pub fn ndctl_name(self) -> &'static str {
        match self {
            NamespaceMode::Raw => "raw",
            NamespaceMode::Fsdax => "fsdax",
            NamespaceMode::Devdax => "devdax",
            NamespaceMode::Sector => "sector",
        }
    }

    /// Whether the namespace's block device lists badblocks in the region's
    /// frame, shifted by the data start (raw, fsdax). A BTT's block device
    /// has no badblocks file (its LBAs go through the BTT map) and
    /// device-dax has no block device.
    pub fn block_view(self) -> bool {
        match self {
            NamespaceMode::Raw | NamespaceMode::Fsdax => true,
            NamespaceMode::Devdax | NamespaceMode::Sector => false,
        }
    }
}

/// An NVDIMM bus a case names: QEMU's NVDIMMs (the ACPI NFIT bus), one of
/// nfit_test's two, e820 or CXL.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
pub enum Bus {
    #[serde(rename = "ACPI.NFIT")]
    AcpiNfit,
    #[serde(rename = "nfit_test.0")]
    NfitTest0,
    #[serde(rename = "nfit_test.1")]
    NfitTest1,
    /// Legacy persistent memory from `memmap=` (machine.e820_pmem).
    #[serde(rename = "e820")]
    E820,
    /// The CXL pmem regions setup makes (setup.cxl_regions), through
    /// cxl_pmem's nvdimm bridge.
    #[serde(rename = "cxl")]
    Cxl,
}

impl Bus {
    /// The provider name ndctl takes (`ndctl start-scrub ACPI.NFIT`).
    pub fn name(self) -> &'static str {
        match self {
            Bus::AcpiNfit => "ACPI.NFIT",
            Bus::NfitTest0 => "nfit_test.0",
            Bus::NfitTest1 => "nfit_test.1",
            Bus::E820 => "e820",
            Bus::Cxl => "CXL",
        }
    }
}

/// Why an fsdax or devdax namespace at guest-physical `start` (when known)
/// of `size` bytes cannot take `align`, or `None`. The kernel's rule
/// (drivers/nvdimm/pfn_devs.c, nd_pfn_init(), 6.12): the data starts at
/// `ALIGN(start + 8K [+ the memmap], max(align, 2M)) - start`, and a data
/// offset at or past the aligned end (`size - end_trunc`) is refused ("unable
/// to satisfy requested alignment", -ENXIO). Checked here without the
/// memmap (its smallest offset), so only what the kernel refuses in every
/// map mode is refused; an unknown start is taken as aligned.
pub fn pfn_align_problem(start: Option<u64>, size: u64, align: u64) -> Option<String> {
    // memremap_compat_align() is SUBSECTION_SIZE (2M) on x86 (mm/memremap.c).
    let align = align.max(2 << 20);
    let start = start.unwrap_or(0);
    let round_up = |v: u64| v.div_ceil(align).checked_mul(align);
    let end = start.checked_add(size)?;
    let end_trunc = end - end / align * align;
    let offset = round_up(start.checked_add(8 << 10)?)? - start;
    (offset >= size.saturating_sub(end_trunc)).then(|| {
        format!(
            "a {}-aligned namespace of {} leaves no data: its data would start {} in, at the first {} boundary after the 8K info block, and the kernel refuses that (pfn_devs.c nd_pfn_init(): \"unable to satisfy requested alignment\")",
            crate::size::ByteSize(align),
            crate::size::ByteSize(size),
            crate::size::ByteSize(offset),
            crate::size::ByteSize(align)
        )
    })
}

#[cfg(test)]
mod pfn_tests {
    use super::pfn_align_problem;
    const M: u64 = 1 << 20;
    const G: u64 = 1 << 30;

    #[test]
    fn an_align_the_range_cannot_hold_is_refused() {
        assert!(pfn_align_problem(Some(G), G, G).is_some());
        assert!(pfn_align_problem(Some(G), 2 * G, G).is_none());
        assert!(pfn_align_problem(Some(G), 16 * M, 2 * M).is_none());
        assert!(pfn_align_problem(None, 2 * M, 2 * M).is_some());
        // A start off the align truncates the end: 1G at 1.5G holds no 1G.
        assert!(pfn_align_problem(Some(G + G / 2), G, G).is_some());
        assert!(pfn_align_problem(Some(G + G / 2), 2 * G, G).is_none());
    }
}
