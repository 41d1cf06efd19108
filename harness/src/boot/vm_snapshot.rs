//! VM snapshots: the guest as setup left it (booted, namespaces and CXL
//! regions made, nothing of the case's steps done yet), saved by the first
//! case of a key and restored by every later case with the same key.
//!
//! A snapshot is a directory `<cache>/vm-snapshots/<lab>/<key>/`:
//! - `state`: QEMU's migration stream (CPU, devices, guest RAM), taken with
//!   the `x-ignore-shared` capability, so the NVDIMM and CXL memory (shared
//!   file-backed RAM) is not in it but in
//! - `nvdimm<i>`, `cxl<i>`, `cxl<i>-lsa`: sparse copies of the backing files
//!   as they were while the VM was stopped; every restore gets fresh copies,
//!   so no error, label or byte written by one case reaches the next;
//! - `layout.json`: what setup found (region names, namespace devices,
//!   geometry), which the steps' placeholders and the oracle need;
//! - `setup-state.json`: the oracle's first observation on the VM that made
//!   the snapshot, which every restore must reproduce (the equivalence check);
//! - `key.txt`: what the key covers, for people; `console.log`: the boot.
//!
//! `<lab>` names the harness binary itself (path, size, mtime), so a change
//! to setup's code never restores a guest an older setup made; older generations are
//! removed. The key covers everything else that shapes the guest: kernel,
//! initramfs, QEMU (binary, version, BIOS), accelerator, kernel command line,
//! machine (NVDIMMs, latent errors, root _DSM and its faults, CXL devices),
//! iasl (it compiles the lab's ACPI table), and setup (namespaces, regions).

use crate::boot::error::BootError;
use crate::case::Case;
use crate::guest::setup::Layout;
use crate::vm::lab_env::LabEnv;
use crate::vm::launch;
use crate::vm::machine::{self, VmFiles};
use crate::vm::VmError;
use pmem_lab_env::events;
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const ROOT: &str = pmem_lab_env::SNAPSHOTS_DIR;
const STATE: &str = "state";
const LAYOUT: &str = "layout.json";
const SETUP_STATE: &str = "setup-state.json";
const KEY_TEXT: &str = "key.txt";
/// Generations (lab binaries) kept besides the current one: a second
/// checkout or an older build running beside this one keeps its snapshots.
const KEEP_GENERATIONS: usize = 1;
/// Touched at every restore: the least recently used snapshots go first
/// when the store is over its budget.
const USED: &str = "used";
/// What all snapshots together may take on disk unless
/// PMEM_LAB_SNAPSHOT_GB says otherwise (a snapshot is 100-200 MB; the whole
/// suite on one kernel and QEMU needs about 6 GB).
const DEFAULT_BUDGET_GB: u64 = 12;

/// How a case's VM starts.
pub enum Start {
    /// Boot; no snapshot is made, for the reason given.
    Cold(&'static str),
    /// Boot, and save a snapshot after setup (this case holds the key's
    /// lock until it is published or given up).
    ColdAndSave(Maker),
    /// Restore the snapshot.
    Restore(Saved),
}

impl Start {
    /// What reports say of it (events.jsonl's `start`).
    pub fn kind(&self) -> events::Start {
        match self {
            Start::Cold(_) => events::Start::Cold,
            Start::ColdAndSave(_) => events::Start::ColdAndSaved,
            Start::Restore(_) => events::Start::Restored,
        }
    }

    /// For steps.log: how, and why not restored.
    pub fn describe(&self) -> String {
        match self {
            Start::Cold(why) => format!("cold ({why})"),
            Start::ColdAndSave(_) => "cold (saving a snapshot)".into(),
            Start::Restore(s) => format!("restored from {}", s.dir.display()),
        }
    }
}

/// What the key of a case covers, and its digest.
#[derive(Debug, Clone)]
pub struct Key {
    pub text: String,
    pub digest: String,
}

/// The key of `case` in `env` (see the module comment).
pub fn key(case: &Case, env: &LabEnv) -> Key {
    let mut text = String::new();
    let _ = writeln!(text, "kernel: {}", file_identity(&env.kernel));
    let _ = writeln!(text, "initramfs: {}", file_identity(&env.initrd));
    let _ = writeln!(
        text,
        "qemu: {}",
        crate::boot::acpi::qemu_tables::qemu_identity(&env.qemu).replace('\n', "; ")
    );
    let _ = writeln!(text, "accel: {}", env.accel.name());
    let _ = writeln!(text, "cmdline: {}", machine::kernel_cmdline(&case.machine));
    let _ = writeln!(text, "machine: {:?}", case.machine);
    if case.machine.lab_root_dsm() {
        let iasl = pmem_lab_env::program("iasl");
        let _ = writeln!(
            text,
            "iasl: {}",
            iasl.as_deref().map(file_identity).unwrap_or_default()
        );
    }
    let _ = writeln!(text, "cxl_regions: {:?}", case.cxl_regions);
    let _ = writeln!(text, "namespaces: {:?}", case.namespaces);
    Key {
        digest: hex(&Sha256::digest(text.as_bytes()))[..16].to_string(),
        text,
    }
}

/// Path, size and modification time: the build cache publishes kernels and
/// images under content keys, so a changed file is a new path or mtime.
fn file_identity(p: &Path) -> String {
    match fs::metadata(p) {
        Ok(m) => {
            let mtime = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            format!("{} {} {mtime}", p.display(), m.len())
        }
        Err(e) => format!("{} ({e})", p.display()),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The harness binary's identity (path, size, mtime: cargo relinks it
/// whenever its code changes): setup's code is part of what a snapshot
/// holds. Not a digest of its bytes: the test binary is an unoptimised
/// build of 100+ MB, and hashing it took 3 s.
fn generation() -> &'static str {
    static GEN: OnceLock<String> = OnceLock::new();
    GEN.get_or_init(|| {
        let exe = std::env::current_exe().unwrap_or_default();
        hex(&Sha256::digest(file_identity(&exe).as_bytes()))[..16].to_string()
    })
}

/// This binary's snapshots: `<cache>/vm-snapshots/<generation>`. The first
/// call removes all but the newest older generations.
fn store(cache: &Path) -> PathBuf {
    let root = cache.join(ROOT);
    let ours = root.join(generation());
    static SWEPT: OnceLock<()> = OnceLock::new();
    SWEPT.get_or_init(|| {
        let _ = fs::create_dir_all(&ours);
        let mut others: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(&root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path() != ours)
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        others.sort();
        others.reverse();
        for (_, old) in others.into_iter().skip(KEEP_GENERATIONS) {
            let _ = fs::remove_dir_all(old);
        }
        // Snapshots whose maker was killed (SIGKILL, a CI timeout) before
        // publishing; an hour is far longer than any save.
        for e in fs::read_dir(&ours).into_iter().flatten().flatten() {
            let stale = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age.as_secs() > 3600);
            if e.file_name().to_string_lossy().starts_with(MAKING) && stale {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    });
    ours
}

const MAKING: &str = ".making-";

/// Remove the least recently used snapshots (any generation) until all of
/// them fit in `budget` bytes.
fn enforce_budget(cache: &Path, budget: u64) {
    let mut all: Vec<(std::time::SystemTime, u64, PathBuf)> = fs::read_dir(cache.join(ROOT))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|g| fs::read_dir(g.path()).into_iter().flatten().flatten())
        .filter_map(|e| Saved::find(&e.path()))
        .map(|s| {
            let used = fs::metadata(s.dir.join(USED))
                .or_else(|_| fs::metadata(&s.dir))
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            (used, s.disk_usage(), s.dir)
        })
        .collect();
    all.sort();
    let mut total: u64 = all.iter().map(|(_, size, _)| size).sum();
    for (_, size, dir) in all {
        if total <= budget {
            break;
        }
        let _ = fs::remove_dir_all(&dir);
        total -= size;
    }
}

fn budget() -> u64 {
    pmem_lab_env::vars::SNAPSHOT_GB
        .get_str()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(DEFAULT_BUDGET_GB)
        << 30
}

/// Decide how `case` starts. With snapshots on, the first case of a key
/// takes the key's lock and boots cold to save one; a case that finds the
/// lock taken waits for it (the snapshot is seconds away, and a second cold
/// boot would only compete for the same cores), then restores.
pub fn plan(case: &Case, env: &LabEnv) -> Result<(Start, Key), VmError> {
    let key = key(case, env);
    if let Some(why) = never_restored(case, env) {
        return Ok((Start::Cold(why), key));
    }
    let dir = store(&env.cache).join(&key.digest);
    if let Some(saved) = Saved::find(&dir) {
        saved.touch();
        return Ok((Start::Restore(saved), key));
    }
    let lock_path = dir.with_extension("lock");
    let lock = File::create(&lock_path).map_err(VmError::file(&lock_path))?;
    // SAFETY: flock on a descriptor we own; blocks until the maker is done.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(VmError::file(&lock_path)(std::io::Error::last_os_error()));
    }
    if let Some(saved) = Saved::find(&dir) {
        return Ok((Start::Restore(saved), key));
    }
    let parent = dir.parent().expect("store/key");
    let tmp = tempfile::Builder::new()
        .prefix(MAKING)
        .tempdir_in(parent)
        .map_err(VmError::file(parent))?;
    fs::write(tmp.path().join(KEY_TEXT), &key.text).map_err(VmError::file(tmp.path()))?;
    Ok((
        Start::ColdAndSave(Maker {
            _lock: lock,
            tmp,
            dir,
        }),
        key,
    ))
}

/// Why `case` boots cold whatever the store holds, if it does.
fn never_restored(case: &Case, env: &LabEnv) -> Option<&'static str> {
    if !env.snapshots {
        Some("snapshots are off: --cold")
    } else if case.cold_boot {
        Some("the case says cold_boot: true")
    } else if !case.machine.cxl.is_empty() {
        // QEMU's cxl-type3 device has no migration state (no vmsd in
        // hw/mem/cxl_type3.c as of 10.0): a restored guest finds its
        // device registers reset, and the mailbox fails (writing
        // trigger_poison_list gave EIO).
        Some("QEMU does not migrate CXL devices")
    } else {
        None
    }
}

/// A snapshot being made: the key's lock, and the folder it is written to
/// (published by renaming it into place; dropped unpublished, it goes).
pub struct Maker {
    _lock: File,
    tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl Maker {
    /// Where QEMU's migration stream goes.
    pub fn state_path(&self) -> PathBuf {
        self.tmp.path().join(STATE)
    }

    /// Keep the backing files as they are now (the VM must be stopped).
    pub fn save_backing(&self, files: &VmFiles) -> Result<u64, VmError> {
        let mut bytes = 0;
        for (from, name) in backing_files(files) {
            if from.exists() {
                bytes += sparse_copy(from, &self.tmp.path().join(name))?;
            }
        }
        Ok(bytes)
    }

    pub fn save_layout(&self, layout: &Layout) -> Result<(), BootError> {
        write_json(&self.tmp.path().join(LAYOUT), layout)
    }

    /// The oracle's first observation, with the boot's console, and publish.
    pub fn publish(
        self,
        setup_state: &serde_json::Value,
        console: &Path,
    ) -> Result<Saved, BootError> {
        write_json(&self.tmp.path().join(SETUP_STATE), setup_state)?;
        let _ = fs::copy(console, self.tmp.path().join("console.log"));
        let tmp = self.tmp.keep();
        // A leftover of an interrupted publish would block the rename.
        let _ = fs::remove_dir_all(&self.dir);
        fs::rename(&tmp, &self.dir).map_err(|e| {
            let _ = fs::remove_dir_all(&tmp);
            BootError::host(&self.dir)(e).context("publishing the snapshot")
        })?;
        let saved = Saved::find(&self.dir).ok_or_else(|| BootError::Snapshot {
            path: self.dir.clone(),
            why: "incomplete".into(),
        })?;
        let cache = self.dir.ancestors().nth(3).unwrap_or(&self.dir);
        enforce_budget(cache, budget());
        Ok(saved)
    }
}

/// A published snapshot.
#[derive(Debug, Clone)]
pub struct Saved {
    pub dir: PathBuf,
}

impl Saved {
    fn find(dir: &Path) -> Option<Saved> {
        [STATE, LAYOUT, SETUP_STATE]
            .iter()
            .all(|f| dir.join(f).is_file())
            .then(|| Saved {
                dir: dir.to_path_buf(),
            })
    }

    /// Remove it (it did not load).
    pub fn discard(&self) {
        let _ = fs::remove_dir_all(&self.dir);
    }

    /// Note a use, for the budget's least-recently-used order.
    pub fn touch(&self) {
        let _ = fs::write(self.dir.join(USED), "");
    }

    pub fn layout(&self) -> Result<Layout, BootError> {
        read_json(&self.dir.join(LAYOUT))
    }

    pub fn setup_state(&self) -> Result<serde_json::Value, BootError> {
        read_json(&self.dir.join(SETUP_STATE))
    }

    /// Bytes on disk (sparse files count what they hold).
    pub fn disk_usage(&self) -> u64 {
        pmem_lab_env::disk_usage(&self.dir)
    }
}

impl launch::Restore for Saved {
    /// Fresh copies of the backing files, where `files` says QEMU finds
    /// them.
    fn restore_backing(&self, files: &VmFiles) -> Result<(), VmError> {
        for (to, name) in backing_files(files) {
            let from = self.dir.join(name);
            if from.exists() {
                sparse_copy(&from, to)?;
            }
        }
        Ok(())
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join(STATE)
    }
}

/// Each file of a VM's that holds guest state outside the migration
/// stream, with its name in a snapshot: the backing files, and the
/// platform's error-list log (the poison model reads it from the start).
fn backing_files(files: &VmFiles) -> Vec<(&Path, String)> {
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    launch::device_files(files)
        .into_iter()
        .chain([files.platform_log.as_path()])
        .filter_map(|p| Some((p, name(p)?)))
        .collect()
}

fn write_json<T: serde::Serialize>(path: &Path, v: &T) -> Result<(), BootError> {
    let text = serde_json::to_string_pretty(v).expect("the lab's own records serialize");
    fs::write(path, text).map_err(BootError::host(path))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, BootError> {
    let text = fs::read_to_string(path).map_err(BootError::host(path))?;
    serde_json::from_str(&text).map_err(|e| BootError::Snapshot {
        path: path.to_path_buf(),
        why: e.to_string(),
    })
}

/// Copy `from` to `to` keeping holes: only the data extents are read and
/// written (SEEK_DATA/SEEK_HOLE), so a 4 GiB NVDIMM with labels and a few
/// info blocks costs kilobytes. Returns the data bytes copied.
pub fn sparse_copy(from: &Path, to: &Path) -> Result<u64, VmError> {
    let err = |p: &Path, e: std::io::Error| VmError::file(p)(e);
    let mut src = File::open(from).map_err(|e| err(from, e))?;
    let len = src.metadata().map_err(|e| err(from, e))?.len();
    let dst = File::create(to).map_err(|e| err(to, e))?;
    dst.set_len(len).map_err(|e| err(to, e))?;
    let fd = src.as_raw_fd();
    let mut copied = 0;
    let mut pos: i64 = 0;
    while (pos as u64) < len {
        // SAFETY: lseek on a descriptor we own.
        let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if data < 0 {
            break; // ENXIO: no data after pos
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let end = if hole < 0 { len as i64 } else { hole };
        src.seek(SeekFrom::Start(data as u64))
            .map_err(|e| err(from, e))?;
        let mut chunk = (&mut src).take((end - data) as u64);
        let mut out = &dst;
        out.seek(SeekFrom::Start(data as u64))
            .map_err(|e| err(to, e))?;
        copied += std::io::copy(&mut chunk, &mut out).map_err(|e| err(to, e))?;
        pos = end;
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_sparse_copy_has_the_same_bytes_and_keeps_the_holes() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("a");
        let to = dir.path().join("b");
        let size = 64 << 20;
        let mut f = File::create(&from).unwrap();
        f.set_len(size).unwrap();
        for (at, byte) in [(0u64, 1u8), (10 << 20, 2), (size - 4096, 3)] {
            f.seek(SeekFrom::Start(at)).unwrap();
            f.write_all(&vec![byte; 4096]).unwrap();
        }
        drop(f);
        // An old file at the destination is replaced, not merged.
        fs::write(&to, vec![9u8; 1 << 20]).unwrap();
        let copied = sparse_copy(&from, &to).unwrap();
        assert!((3 * 4096..1 << 20).contains(&copied), "{copied}");
        assert_eq!(fs::read(&from).unwrap(), fs::read(&to).unwrap());
        let blocks = fs::metadata(&to).unwrap().blocks() * 512;
        assert!(blocks < 4 << 20, "the copy is not sparse: {blocks} bytes");
    }

    #[test]
    fn the_key_covers_machine_setup_and_parts_but_not_the_steps() {
        let dir = tempfile::tempdir().unwrap();
        let env = crate::vm::lab_env::test_env(dir.path());
        let load =
            |yaml: &str| crate::case::load_str("k", Path::new("/cases/k.yaml"), yaml).unwrap();
        let base = "machine:\n  nvdimms: [{size: 1G}]\nsetup:\n  namespaces: [{name: d, mode: devdax, size: 512M, align: 2M}]\nsteps:\n  - run: [true]\n";
        let k = key(&load(base), &env);
        assert_eq!(k.digest.len(), 16);
        for line in [
            "kernel: ",
            "initramfs: ",
            "qemu: ",
            "accel: tcg",
            "cmdline: console=ttyS0",
            "machine: ",
            "iasl: ",
            "namespaces: ",
        ] {
            assert!(k.text.contains(line), "{line} missing:\n{}", k.text);
        }
        // Other steps, a cold-boot request: the same guest after setup.
        let steps = base.replace("run: [true]", "run: [false]");
        assert_eq!(key(&load(&steps), &env).digest, k.digest);
        let cold = format!("cold_boot: true\n{base}");
        assert_eq!(key(&load(&cold), &env).digest, k.digest);
        // What shapes the guest changes it.
        for other in [
            base.replace("align: 2M", "align: 4K"),
            base.replace("size: 1G}", "size: 1G, errors: [{offset: 64M}]}"),
            base.replace("nvdimms: [{size: 1G}]", "nvdimms: [{size: 1G}]\n  cpus: 2"),
        ] {
            assert_ne!(key(&load(&other), &env).digest, k.digest, "{other}");
        }
        let mut kvm = crate::vm::lab_env::test_env(dir.path());
        kvm.accel = crate::vm::machine::Accel::Kvm;
        assert_ne!(key(&load(base), &kvm).digest, k.digest);
    }

    #[test]
    fn a_cold_run_or_case_makes_no_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let mut env = crate::vm::lab_env::test_env(dir.path());
        let case = |yaml: &str| crate::case::load_str("k", Path::new("/k.yaml"), yaml).unwrap();
        let cold = case("cold_boot: true\nsteps:\n  - run: [true]\n");
        assert!(matches!(plan(&cold, &env).unwrap().0, Start::Cold(_)));
        let cxl = case("machine:\n  cxl: [{size: 256M}]\nsteps:\n  - run: [true]\n");
        let (start, _) = plan(&cxl, &env).unwrap();
        assert_eq!(start.describe(), "cold (QEMU does not migrate CXL devices)");
        assert_eq!(start.kind(), events::Start::Cold);
        env.snapshots = false;
        let plain = case("steps:\n  - run: [true]\n");
        assert!(matches!(plan(&plain, &env).unwrap().0, Start::Cold(_)));
        // With snapshots on and none saved, the first case makes one.
        env.snapshots = true;
        let (start, _) = plan(&plain, &env).unwrap();
        assert!(matches!(start, Start::ColdAndSave(_)));
        assert_eq!(start.kind(), events::Start::ColdAndSaved);
        assert!(!dir
            .path()
            .join("cache")
            .join(ROOT)
            .read_dir()
            .unwrap()
            .any(|e| {
                let p = e.unwrap().path();
                p.is_dir()
                    && p.read_dir()
                        .unwrap()
                        .any(|k| Saved::find(&k.unwrap().path()).is_some())
            }));
    }

    #[test]
    fn over_budget_the_least_recently_used_snapshots_go() {
        let cache = tempfile::tempdir().unwrap();
        let make = |generation: &str, key: &str, used_secs_ago: u64| {
            let dir = cache.path().join(ROOT).join(generation).join(key);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join(STATE), vec![1u8; 1 << 20]).unwrap();
            fs::write(dir.join(LAYOUT), "{}").unwrap();
            fs::write(dir.join(SETUP_STATE), "{}").unwrap();
            let used = File::create(dir.join(USED)).unwrap();
            let when = std::time::SystemTime::now() - std::time::Duration::from_secs(used_secs_ago);
            used.set_modified(when).unwrap();
            dir
        };
        let old = make("g1", "a", 300);
        let recent = make("g1", "b", 10);
        let other_gen = make("g2", "c", 200);
        // Room for two of the three (each a little over 1 MiB).
        enforce_budget(cache.path(), 2 * (1 << 20) + (1 << 19) + 64 * 1024);
        assert!(!old.exists(), "the least recently used goes first");
        assert!(recent.exists() && other_gen.exists());
        enforce_budget(cache.path(), 0);
        assert!(!recent.exists() && !other_gen.exists());
    }

    #[test]
    fn an_incomplete_snapshot_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Saved::find(dir.path()).is_none());
        for f in [STATE, LAYOUT] {
            fs::write(dir.path().join(f), "x").unwrap();
        }
        assert!(Saved::find(dir.path()).is_none());
        fs::write(dir.path().join(SETUP_STATE), "{}").unwrap();
        assert!(Saved::find(dir.path()).is_some());
    }
}
