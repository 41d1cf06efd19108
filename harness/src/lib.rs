//! pmem-lab's library: case model, QEMU machine builder, VM lifecycle, guest
//! agent client, expectations and the case runner. The `lab` test target
//! (tests/lab.rs) turns each case file into a libtest-mimic trial.

// The case layer lives in its own crate (harness/spec), so the compiler
// keeps it from reaching the VM layer; re-exported under the old paths.
pub use pmem_lab_spec::{
    address, badblocks, case, expect, json_subset, known, mce, namespace, size, template,
};

pub mod acpi;
pub mod boot;
pub mod bring;
pub mod bundle;
pub mod checks;
pub mod compile;
pub mod cxl;
pub mod dax;
pub mod failure;
pub mod gdb;
pub mod guest;
pub mod inject;
pub mod lab_env;
pub mod launch;
pub mod machine;
pub mod ndctl;
pub mod oracle;
pub mod poison;
pub mod preflight;
pub mod qmp;
pub mod report;
pub mod runner;
pub mod setup;
pub mod shell;
pub mod vm;
pub mod vm_snapshot;
