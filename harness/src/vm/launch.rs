//! A machine description to a running QEMU: the VM's private directory
//! (sockets need short paths; sparse NVDIMM backing files go with them), the
//! command line (saved in the case's folder), the process. Nothing about
//! ACPI tables: [`crate::boot`] adds those, and the probe boot of
//! [`crate::boot::acpi::qemu_tables`] runs without them.

use crate::vm::lab_env::LabEnv;
use crate::vm::machine::{self, MachineSpec, VmFiles};
use crate::vm::{self, Vm, VmError};
use pmem_lab_env::vars;
use std::fs;
use std::path::{Path, PathBuf};

const PRIVATE_PREFIX: &str = "pl-";
/// Names the process that owns a private directory.
const OWNER_FILE: &str = "owner.pid";

/// A private 0700 directory for one VM, removed when the guard drops. A run
/// killed outright (SIGKILL, a CI timeout) drops nothing, and each such
/// directory holds a copy of the initrd (about 40 MB): the first VM of the
/// next run removes the directories whose owner is gone.
pub fn private_dir() -> Result<tempfile::TempDir, VmError> {
    let root = vars::TMPDIR
        .get()
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| sweep_orphans(&root));
    let dir = tempfile::Builder::new()
        .prefix(PRIVATE_PREFIX)
        .tempdir_in(&root)
        .map_err(VmError::file(&root))?;
    fs::write(dir.path().join(OWNER_FILE), std::process::id().to_string())
        .map_err(VmError::file(dir.path()))?;
    Ok(dir)
}

/// Remove `pl-*` directories under `root` whose owner process has exited
/// (checked with kill(pid, 0)); directories without an owner file (made
/// before there was one) go when they are a day old.
fn sweep_orphans(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let named = e.file_name().to_string_lossy().starts_with(PRIVATE_PREFIX);
        if !named || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let orphan = match fs::read_to_string(path.join(OWNER_FILE)) {
            Ok(pid) => pid.trim().parse::<i32>().is_ok_and(|pid| !alive(pid)),
            Err(_) => e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > std::time::Duration::from_secs(24 * 3600)),
        };
        if orphan {
            let _ = fs::remove_dir_all(&path);
        }
    }
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// What QEMU restores instead of booting. The snapshot layer (boot) decides
/// which snapshot and where its files are; this layer only asks for the
/// devices' contents and the migration stream.
pub trait Restore {
    /// Fill the VM's backing files (`files`) as the snapshot left them.
    fn restore_backing(&self, files: &VmFiles) -> Result<(), VmError>;
    /// The migration stream QEMU loads with `-incoming`.
    fn state_path(&self) -> PathBuf;
}

/// Start QEMU for `machine` booting `initrd` (or restoring `snapshot`), its
/// files in `private`, its logs and command line in `dir`.
pub fn start(
    machine: &MachineSpec,
    env: &LabEnv,
    dir: &Path,
    private: &Path,
    initrd: &Path,
    interactive: bool,
    snapshot: Option<&dyn Restore>,
) -> Result<(Vm, VmFiles), VmError> {
    let mut files = VmFiles::in_dir(private, &env.kernel, initrd, machine);
    if let Some(saved) = snapshot {
        // The snapshot's copies: the devices as setup left them.
        saved.restore_backing(&files)?;
        files.incoming = Some(saved.state_path());
    } else {
        // Sparse backing files: a device reads as zeros and costs no disk.
        for (path, size) in device_files(&files).into_iter().zip(device_sizes(machine)) {
            fs::File::create(path)
                .and_then(|f| f.set_len(size))
                .map_err(VmError::file(path))?;
        }
    }
    let args = machine::qemu_args(machine, env.accel, &files);
    let _ = fs::write(
        dir.join("qemu-cmdline.txt"),
        vm::command_line(&env.qemu, &args) + "\n",
    );
    let vm = Vm::start_with(&env.qemu, &args, &files, dir, interactive)?;
    Ok((vm, files))
}

/// Every file that backs a memory device of the VM, in the order of
/// [`device_sizes`]: what a start creates and a VM snapshot copies (a new
/// kind of device is added here and in `machine.rs`, nowhere else).
pub fn device_files(files: &VmFiles) -> Vec<&Path> {
    files
        .nvdimm_backing
        .iter()
        .chain(files.cxl_backing.iter().flat_map(|(m, l)| [m, l]))
        .map(PathBuf::as_path)
        .collect()
}

/// The size of each of [`device_files`], from the machine.
fn device_sizes(machine: &MachineSpec) -> Vec<u64> {
    machine
        .nvdimms
        .iter()
        .map(|nv| nv.size.bytes())
        .chain(
            machine
                .cxl
                .iter()
                .flat_map(|d| [d.size.bytes(), d.lsa_size.bytes()]),
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_device_file_gets_its_size() {
        let machine = |yaml: &str| -> MachineSpec {
            let text = format!("machine:\n{yaml}steps:\n  - run: [true]\n");
            crate::case::load_str("t", Path::new("t.yaml"), &text)
                .unwrap()
                .machine
        };
        let files =
            |m: &MachineSpec| VmFiles::in_dir(Path::new("/p"), Path::new("k"), Path::new("i"), m);
        let shown = |f: &VmFiles| -> Vec<String> {
            device_files(f)
                .iter()
                .map(|p| p.display().to_string())
                .collect()
        };
        let nv = machine("  nvdimms: [{size: 1G}, {size: 2G}]\n");
        assert_eq!(shown(&files(&nv)), ["/p/nvdimm0", "/p/nvdimm1"]);
        assert_eq!(device_sizes(&nv), [1 << 30, 2 << 30]);
        let cxl = machine("  cxl: [{size: 256M, lsa_size: 1M}]\n");
        assert_eq!(shown(&files(&cxl)), ["/p/cxl0", "/p/cxl0-lsa"]);
        assert_eq!(device_sizes(&cxl), [256 << 20, 1 << 20]);
    }

    #[test]
    fn only_directories_of_gone_owners_are_swept() {
        let root = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        let make = |name: &str, owner: Option<String>| {
            let d = root.path().join(name);
            fs::create_dir(&d).unwrap();
            if let Some(pid) = owner {
                fs::write(d.join(OWNER_FILE), pid).unwrap();
            }
            d
        };
        let dead = make("pl-dead", Some(gone.to_string()));
        let ours = make("pl-ours", Some(std::process::id().to_string()));
        let legacy = make("pl-legacy", None);
        let other = make("other", Some(gone.to_string()));
        sweep_orphans(root.path());
        assert!(!dead.exists());
        assert!(ours.exists() && legacy.exists() && other.exists());
    }
}
