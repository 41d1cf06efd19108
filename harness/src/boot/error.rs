//! Why a case's machine did not come up ready, as a type: the runner turns
//! it into a boot failure, and a guest panic under it stays a guest panic.

use crate::guest::GuestError;
use crate::vm::VmError;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Guest(#[from] GuestError),
    /// A host file of the boot: the initrd, the cache, a snapshot's files.
    #[error("{}: {source}", path.display())]
    Host {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A host tool the boot runs (iasl, QEMU for a probe) failed: its
    /// words.
    #[error("{tool}: {output}")]
    Tool { tool: String, output: String },
    /// QEMU's ACPI tables are not what the lab can build on (acpi/table.rs
    /// says why), or the machine needs more than the lab's table holds.
    #[error("{0}")]
    Tables(String),
    /// The guest did not take the lab's ACPI tables, or took others.
    #[error("{0}")]
    NotTaken(String),
    /// A VM snapshot's records do not describe what the lab saved.
    #[error("{}: {why}", path.display())]
    Snapshot { path: PathBuf, why: String },
    /// What the lab was doing when the inner error happened.
    #[error("{doing}: {source}")]
    Context {
        doing: String,
        source: Box<BootError>,
    },
}

impl BootError {
    pub fn context(self, doing: impl Into<String>) -> BootError {
        BootError::Context {
            doing: doing.into(),
            source: Box::new(self),
        }
    }

    /// A host file's error, for `map_err`.
    pub fn host(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> BootError {
        let path = path.into();
        move |source| BootError::Host { path, source }
    }

    /// What kind of failure this is, without the details that change from
    /// run to run.
    pub fn class(&self) -> String {
        match self {
            BootError::Vm(e) => e.class(),
            BootError::Guest(e) => e.class(),
            BootError::Host { .. } => "a host file".into(),
            BootError::Tool { tool, .. } => format!("{tool} failed"),
            BootError::Tables(_) => "QEMU's ACPI tables".into(),
            BootError::NotTaken(_) => "the guest did not take the lab's ACPI tables".into(),
            BootError::Snapshot { .. } => "a VM snapshot's records".into(),
            BootError::Context { source, .. } => source.class(),
        }
    }

    /// The guest kernel's panic text, when that is what this is at bottom.
    pub fn panic(&self) -> Option<&str> {
        match self {
            BootError::Context { source, .. } => source.panic(),
            BootError::Vm(VmError::Panic { console }) => Some(console),
            BootError::Guest(g) => g.panic(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_in_the_guest_layer_is_a_panic_of_the_boot() {
        let e = BootError::from(GuestError::from(VmError::Panic {
            console: "Kernel panic - not syncing: VFS".into(),
        }))
        .context("the lab's ACPI tables");
        assert_eq!(e.panic(), Some("Kernel panic - not syncing: VFS"));
        let e = BootError::Tables("QEMU's NFIT has 1 range for 2 NVDIMMs".into());
        assert_eq!(e.panic(), None);
    }
}
