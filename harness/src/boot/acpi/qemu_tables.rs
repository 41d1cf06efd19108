//! QEMU's own ACPI tables for a machine shape: read once from a guest booted
//! on that exact machine, then cached.
//!
//! Why a boot: QEMU builds its NVDIMM SSDT at run time (its shape depends on
//! the QEMU version and the NVDIMM count) and the firmware patches the
//! address of QEMU's DSM buffer (`MEMA`) into it while loading it, so only a
//! booted guest sees the table the kernel will run. The cache key covers
//! everything that can change those bytes: QEMU's version and binary, its
//! BIOS, the accelerator and the whole machine shape (CPUs, memory, every
//! NVDIMM). A new QEMU or BIOS package therefore means a new probe, never a
//! stale copy.

use super::table::{self, Spa};
use crate::boot::error::BootError;
use crate::guest::Guest;
use crate::vm::machine::{self, MachineSpec, VmFiles};
use pmem_lab_env::qemu::Qemu;

use crate::vm::lab_env::LabEnv;
use crate::vm::launch;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// The tables the lab builds on.
#[derive(Debug, Clone)]
pub struct QemuTables {
    /// The NVDIMM SSDT as the guest saw it (MEMA patched in).
    pub ssdt: Vec<u8>,
    /// The NFIT as the guest saw it.
    pub nfit: Vec<u8>,
    /// The NVDIMMs' SPA ranges from the NFIT, by address.
    pub spa: Vec<Spa>,
    /// The cache entry they came from (or were published to).
    pub cached_in: PathBuf,
}

const SSDT_FILE: &str = "qemu-nvdimm-ssdt.aml";
const NFIT_FILE: &str = "nfit.aml";
const TABLES: &str = "/sys/firmware/acpi/tables";

/// The tables for `shape`, from the cache or from a probe boot whose
/// artifacts go to `probe_dir`.
pub fn get(shape: &MachineSpec, env: &LabEnv, probe_dir: &Path) -> Result<QemuTables, BootError> {
    let key = key(shape, env);
    let dir = env.cache.join("acpi").join(&key);
    // One probe per key at a time in this process; other processes may race
    // harmlessly (same content, atomic publish).
    let lock = key_lock(&key);
    let _held = lock.lock().unwrap_or_else(|p| p.into_inner());
    if let Ok(t) = load(&dir) {
        return Ok(t);
    }
    let mut t = probe(shape, env, probe_dir)
        .map_err(|e| e.context("reading QEMU's ACPI tables for this machine"))?;
    publish(&dir, shape, env, &t)?;
    t.cached_in = dir;
    Ok(t)
}

fn key_lock(key: &str) -> Arc<Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<String, Arc<Mutex<()>>>>> = OnceLock::new();
    let mut map = LOCKS.get_or_init(Default::default).lock().unwrap();
    Arc::clone(map.entry(key.to_string()).or_default())
}

/// The cache key: QEMU's identity and the command line the shape gives
/// (with fixed file names), which is exactly what decides QEMU's tables.
fn key(shape: &MachineSpec, env: &LabEnv) -> String {
    let mut h = Sha256::new();
    h.update(qemu_identity(&env.qemu).as_bytes());
    for arg in shape_args(shape, env) {
        h.update(arg.as_encoded_bytes());
        h.update([0]);
    }
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// QEMU's arguments for `shape` with placeholder file names: the same for
/// every VM of the shape.
fn shape_args(shape: &MachineSpec, env: &LabEnv) -> Vec<std::ffi::OsString> {
    let files = VmFiles::in_dir(
        Path::new("/vm"),
        Path::new("/kernel"),
        Path::new("/initrd"),
        shape,
    );
    machine::qemu_args(shape, env.accel, &files)
}

/// QEMU's version line plus the size and mtime of its binary and BIOS.
pub(crate) fn qemu_identity(qemu: &Qemu) -> String {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let mut id = qemu.version_line().unwrap_or_default();
        let bios = qemu
            .firmware
            .iter()
            .map(|d| d.join("bios-256k.bin"))
            .chain([PathBuf::from("/usr/share/qemu/bios-256k.bin")])
            .find(|p| p.is_file());
        for p in [qemu.binary.clone()].into_iter().chain(bios) {
            if let Ok(m) = fs::metadata(&p) {
                let mtime = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
                id.push_str(&format!("\n{} {} {mtime:?}", p.display(), m.len()));
            }
        }
        id
    })
    .clone()
}

fn load(dir: &Path) -> Result<QemuTables, BootError> {
    let read = |f: &str| fs::read(dir.join(f)).map_err(BootError::host(dir.join(f)));
    let nfit = read(NFIT_FILE)?;
    Ok(QemuTables {
        ssdt: read(SSDT_FILE)?,
        spa: table::nfit_pm_ranges(&nfit).map_err(BootError::Tables)?,
        nfit,
        cached_in: dir.to_path_buf(),
    })
}

fn publish(dir: &Path, shape: &MachineSpec, env: &LabEnv, t: &QemuTables) -> Result<(), BootError> {
    let parent = dir.parent().expect("cache/acpi/key");
    fs::create_dir_all(parent).map_err(BootError::host(parent))?;
    let tmp = tempfile::tempdir_in(parent).map_err(BootError::host(parent))?;
    let write = |f: &str, b: &[u8]| {
        let p = tmp.path().join(f);
        fs::write(&p, b).map_err(BootError::host(&p))
    };
    write(SSDT_FILE, &t.ssdt)?;
    write(NFIT_FILE, &t.nfit)?;
    write(
        "machine.txt",
        format!(
            "{}\n{}\n",
            shape_args(shape, env)
                .iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            qemu_identity(&env.qemu)
        )
        .as_bytes(),
    )?;
    let staged = tmp.keep();
    if fs::rename(&staged, dir).is_err() {
        // Another process published the same key first.
        let _ = fs::remove_dir_all(&staged);
    }
    Ok(())
}

/// Boot `shape` with QEMU's tables untouched and read them from sysfs.
fn probe(shape: &MachineSpec, env: &LabEnv, probe_dir: &Path) -> Result<QemuTables, BootError> {
    fs::create_dir_all(probe_dir).map_err(BootError::host(probe_dir))?;
    let private = launch::private_dir()?;
    let (vm, _) = launch::start(
        shape,
        env,
        probe_dir,
        private.path(),
        &env.initrd,
        false,
        None,
    )?;
    let mut guest = Guest::new(vm);
    let result = guest
        .vm()
        .wait_ready(Duration::from_secs(120))
        .map_err(|e| {
            BootError::from(e).context(format!("probe (artifacts in {})", probe_dir.display()))
        })
        .and_then(|_| read_tables(&mut guest));
    guest.kill();
    result
}

fn read_tables(guest: &mut Guest) -> Result<QemuTables, BootError> {
    let listing = guest.ok(&["ls", TABLES])?.stdout;
    let mut ssdt = None;
    for name in listing.split_whitespace().filter(|n| n.starts_with("SSDT")) {
        let bytes = dump(guest, name)?;
        if table::is_qemu_nvdimm_ssdt(&bytes) {
            ssdt = Some(bytes);
        }
    }
    let ssdt = ssdt.ok_or_else(|| {
        BootError::Tables(format!(
            "no SSDT with OEM table id NVDIMM in {TABLES} ({})",
            listing.trim()
        ))
    })?;
    let nfit = dump(guest, "NFIT")?;
    Ok(QemuTables {
        ssdt,
        spa: table::nfit_pm_ranges(&nfit).map_err(BootError::Tables)?,
        nfit,
        cached_in: PathBuf::new(),
    })
}

/// A table from the guest's sysfs, checked (checksum, header length).
pub(super) fn dump(guest: &mut Guest, name: &str) -> Result<Vec<u8>, BootError> {
    let path = format!("{TABLES}/{name}");
    let od = guest.ok(&["od", "-An", "-v", "-tx1", &path])?.stdout;
    let bytes = table::parse_od(&od).map_err(|e| BootError::Tables(format!("{path}: {e}")))?;
    if !table::checksum_ok(&bytes) {
        return Err(BootError::Tables(format!("{path}: bad checksum")));
    }
    table::header(&bytes).map_err(|e| BootError::Tables(format!("{path}: {e}")))?;
    Ok(bytes)
}
