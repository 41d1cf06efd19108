//! Namespace modes: the one vocabulary both the case model and the address
//! map need (its own module so neither imports the other).

use serde::Deserialize;

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NamespaceMode {
    Raw,
    Fsdax,
    Devdax,
}

impl NamespaceMode {
    /// The name `ndctl create-namespace --mode` takes.
    pub fn ndctl_name(self) -> &'static str {
        match self {
            NamespaceMode::Raw => "raw",
            NamespaceMode::Fsdax => "fsdax",
            NamespaceMode::Devdax => "devdax",
        }
    }
}

/// An NVDIMM bus a case names: QEMU's NVDIMMs (the ACPI NFIT bus) or one of
/// nfit_test's two.
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
}

impl Bus {
    /// The provider name ndctl takes (`ndctl start-scrub ACPI.NFIT`).
    pub fn name(self) -> &'static str {
        match self {
            Bus::AcpiNfit => "ACPI.NFIT",
            Bus::NfitTest0 => "nfit_test.0",
            Bus::NfitTest1 => "nfit_test.1",
            Bus::E820 => "e820",
        }
    }
}
