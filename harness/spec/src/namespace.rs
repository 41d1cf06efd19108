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
