//! pmem-lab's case files and the pure logic they need, below the VM layer.
//!
//! [`case`] loads and checks YAML cases (serde-saphyr: maintained, unlike the
//! archived serde_yaml, and it locates every error by line and column);
//! [`machine`] is the machine a case asks for; [`cxl`] CXL poison events and
//! address translation; [`size`], [`badblocks`],
//! [`address`], [`mce`], [`template`], [`json_subset`] and [`expect`] are
//! the vocabulary and arithmetic of cases; [`known`] reads
//! known-failures.yaml. Nothing here starts a process or opens a socket:
//! the harness crate, which depends on this one, does.

pub mod address;
pub mod badblocks;
pub mod case;
pub mod cxl;
pub mod expect;
pub mod json_subset;
pub mod known;
pub mod machine;
pub mod mce;
pub mod namespace;
pub mod size;
pub mod template;
pub mod unreadable;
