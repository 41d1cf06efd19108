//! A machine description to a running QEMU: the VM's private directory
//! (sockets need short paths; sparse NVDIMM backing files go with them), the
//! command line (saved in the case's folder), the process. Nothing about
//! ACPI tables: [`crate::boot`] adds those, and the probe boot of
//! [`crate::acpi::qemu_tables`] runs without them.

use crate::lab_env::LabEnv;
use crate::machine::{self, MachineSpec, VmFiles};
use crate::vm::{self, Vm};
use pmem_lab_env::vars;
use std::fs;
use std::path::{Path, PathBuf};

/// A private 0700 directory for one VM, removed when the guard drops.
pub fn private_dir() -> Result<tempfile::TempDir, String> {
    tempfile::Builder::new()
        .prefix("pl-")
        .tempdir_in(
            vars::TMPDIR
                .get()
                .map(PathBuf::from)
                .unwrap_or_else(std::env::temp_dir),
        )
        .map_err(|e| format!("cannot create a private temp dir: {e}"))
}

/// Start QEMU for `machine` booting `initrd`, its files in `private`, its
/// logs and command line in `dir`.
pub fn start(
    machine: &MachineSpec,
    env: &LabEnv,
    dir: &Path,
    private: &Path,
    initrd: &Path,
    interactive: bool,
) -> Result<Vm, String> {
    let files = VmFiles::in_dir(private, &env.kernel, initrd, machine.nvdimms.len());
    for (nv, path) in machine.nvdimms.iter().zip(&files.nvdimm_backing) {
        let f = fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
        f.set_len(nv.size.bytes())
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let args = machine::qemu_args(machine, env.accel, &files);
    let _ = fs::write(
        dir.join("qemu-cmdline.txt"),
        vm::command_line(&env.qemu, &args) + "\n",
    );
    Vm::start_with(&env.qemu, &args, &files, dir, interactive)
}
