//! What `cargo xtask` and the harness agree on, in one place: the
//! environment variables that carry a run's configuration from the CLI to the
//! test runner ([`vars`]), which QEMU the lab runs and how ([`qemu`]), a
//! program's shared-library closure ([`ldd`]), how many VMs run at a time
//! ([`parallel`]), the `HOST:GUEST` argument
//! of `lab shell --put` ([`put`]) and the events.jsonl schema ([`events`]).
//!
//! Both sides link this crate, so a variable's name or an event's field is
//! written once and the compiler checks every use. Its dependencies are
//! serde's and the agent protocol's: xtask stays lean.

pub mod events;
pub mod ldd;
pub mod parallel;
pub mod put;
pub mod qemu;
pub mod vars;

use std::path::PathBuf;

/// Where `name` is on PATH, if it is: the one PATH lookup of the lab
/// (xtask's and the harness's). The system folders come last, for a PATH
/// without them (a user's shell may lack /usr/sbin, where apt-get's
/// helpers and iasl's kin live).
pub fn program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A run's report folder: PMEM_LAB_REPORT, else `report/` beside the
/// artifacts root (`target/pmem-lab/report` by default). The harness
/// writes events.jsonl and junit.xml there; xtask puts its reports across
/// kernels and passes beside them.
pub fn report_dir(artifacts: &std::path::Path) -> PathBuf {
    vars::REPORT
        .get()
        .map(PathBuf::from)
        .unwrap_or_else(|| artifacts.with_file_name("report"))
}

/// `s` as one word of a POSIX shell command line: as it is when it is
/// plain, else in single quotes. The one quoting of the lab (QEMU command
/// lines, reproducers, `cargo xtask env`).
pub fn shell_quote(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_=,./:+@%".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The lab's build cache: `PMEM_LAB_CACHE`, else `$XDG_CACHE_HOME/pmem-lab`,
/// else `~/.cache/pmem-lab`.
pub fn default_cache() -> PathBuf {
    if let Some(dir) = vars::CACHE.get() {
        return PathBuf::from(dir);
    }
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(xdg).join("pmem-lab");
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/pmem-lab"))
        .unwrap_or_else(|| std::env::temp_dir().join("pmem-lab-cache"))
}

/// The VM snapshots' folder in the cache (the harness's store,
/// harness/src/boot/vm_snapshot.rs; the benchmark reports its size):
/// `<cache>/vm-snapshots/<lab binary>/<key>/`.
pub const SNAPSHOTS_DIR: &str = "vm-snapshots";

/// Bytes on disk of the files directly in `dir` (a sparse file counts what
/// it holds).
pub fn disk_usage(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.blocks() * 512)
        .sum()
}
