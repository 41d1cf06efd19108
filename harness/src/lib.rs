//! pmem-lab's library: case model, QEMU machine builder, VM lifecycle, guest
//! agent client, expectations and the case runner. The `lab` test target
//! (tests/lab.rs) turns each case file into a libtest-mimic trial.

pub mod acpi;
pub mod address;
pub mod badblocks;
pub mod bundle;
pub mod case;
pub mod checks;
pub mod dax;
pub mod expect;
pub mod guest;
pub mod inject;
pub mod json_subset;
pub mod known;
pub mod machine;
pub mod mce;
pub mod oracle;
pub mod preflight;
pub mod qmp;
pub mod report;
pub mod runner;
pub mod setup;
pub mod shell;
pub mod size;
pub mod template;
pub mod vm;
