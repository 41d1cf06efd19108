//! Start a case's VM: the lab's ACPI tables when the machine has them, then
//! QEMU ([`crate::vm::launch`]); and the wait for the agent that every user of a
//! case VM (runner, shell) needs before setup.

pub mod acpi;
pub mod error;
pub mod vm_snapshot;

pub use error::BootError;

use crate::boot::vm_snapshot::Saved;
use crate::guest::Guest;
use crate::vm;
use crate::vm::lab_env::LabEnv;
use crate::vm::launch;
use crate::vm::machine::{MachineSpec, VmFiles};
use std::path::Path;
use std::time::{Duration, Instant};

/// A started VM and what goes with it.
pub struct Started {
    pub guest: Guest,
    /// The VM's private directory (sockets, NVDIMM files, initrd); removed
    /// when dropped.
    pub private: tempfile::TempDir,
    /// The lab's ACPI tables, when the machine has them (and it booted).
    pub acpi: Option<AcpiTables>,
    /// Where QEMU finds the VM's files (a snapshot saves the backing files
    /// from there).
    pub files: VmFiles,
    /// Restored from a VM snapshot rather than booted.
    pub restored: bool,
}

/// What went into a VM's lab ACPI tables.
pub struct AcpiTables {
    /// QEMU's tables they were built on (see [`acpi::check_upgraded`]).
    pub built_on: acpi::qemu_tables::QemuTables,
    /// Time spent preparing them (a probe boot for a new machine shape
    /// included).
    pub took: Duration,
}

impl Started {
    /// Wait for the agent, then check that the kernel took the lab's ACPI
    /// tables (when there are any): what every user of a case VM needs
    /// before setup.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<vm::Ready, BootError> {
        if self.restored {
            return Ok(self.guest.wait_restored(timeout)?);
        }
        // No "boot:" here: the caller's failure class says it (it was
        // printed twice).
        let ready = self.guest.vm().wait_ready(timeout)?;
        if let Some(t) = &self.acpi {
            acpi::check_upgraded(&mut self.guest, &t.built_on)?;
        }
        Ok(ready)
    }
}

/// Start a VM of `machine`: its private directory (sockets need short paths;
/// sparse NVDIMM backing files and the initrd with the lab's ACPI tables go
/// with them, and all of it goes when the returned guard drops), the QEMU
/// command line (saved in `dir`), QEMU.
/// With `snapshot`, QEMU restores it instead of booting: no ACPI tables to
/// prepare (they are in the guest already), and the initrd QEMU loads is
/// never read by the guest.
pub fn start_machine(
    machine: &MachineSpec,
    env: &LabEnv,
    dir: &Path,
    interactive: bool,
    snapshot: Option<&Saved>,
) -> Result<Started, BootError> {
    let private = launch::private_dir()?;
    let mut acpi = None;
    let initrd = if machine.lab_root_dsm() && snapshot.is_none() {
        let path = private.path().join("initrd");
        let start = Instant::now();
        let built_on = acpi::write_initrd(machine, env, dir, &path)
            .map_err(|e| e.context("the lab's ACPI tables"))?;
        acpi = Some(AcpiTables {
            built_on,
            took: start.elapsed(),
        });
        path
    } else {
        env.initrd.clone()
    };
    let (vm, files) = launch::start(
        machine,
        env,
        dir,
        private.path(),
        &initrd,
        interactive,
        snapshot.map(|s| s as &dyn launch::Restore),
    )?;
    Ok(Started {
        guest: Guest::new(vm),
        private,
        acpi,
        files,
        restored: snapshot.is_some(),
    })
}
