//! pmem-lab's library: case model, QEMU machine builder, VM lifecycle, guest
//! agent client, expectations and the case runner. The `lab` test target
//! (tests/lab.rs) turns each case file into a libtest-mimic trial.

// The case layer lives in its own crate (harness/spec), so the compiler
// keeps it from reaching the VM layer; re-exported under the old paths.
pub use pmem_lab_spec::{
    address, badblocks, case, expect, json_subset, known, mce, namespace, size, template,
    unreadable,
};

// Layers, each a folder that imports only the folders below it (checked by
// tests/layers.rs; docs/architecture.md has the rule):
pub mod boot; // ACPI tables and VM snapshots: a case's machine up to ready
pub mod guest; // the agent and what runs through it: setup, ndctl, dax, inject
pub mod observe; // the oracle and the checks of expectations
pub mod run; // a case's phases, its verdict and report; the shell
pub mod vm; // QEMU: machine arguments, the process, QMP, gdb, the poison model
