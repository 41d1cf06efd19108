//! Small shared pieces: the error type, running commands, hashing, paths.

use fs_err as fs;
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::Path;
use std::process::Command;

/// An error that tells the user what happened and, where we know, what to do.
#[derive(Debug, Clone)]
pub struct Error(String);

impl Error {
    pub fn new(msg: impl Into<String>) -> Self {
        Error(msg.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error(e.to_string())
    }
}

impl From<xshell::Error> for Error {
    fn from(e: xshell::Error) -> Self {
        Error(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A command as the user would type it, for logs and messages.
pub fn render(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

pub use pmem_lab_env::program as find_in_path;

/// Incremental SHA-256 over labelled parts, for content-addressed cache keys.
pub struct Key(Sha256);

impl Key {
    pub fn new(kind: &str) -> Self {
        let mut h = Sha256::new();
        h.update(kind.as_bytes());
        Key(h)
    }
    pub fn str(&mut self, label: &str, value: &str) -> &mut Self {
        self.0
            .update(format!("\0{label}\0{}\0", value.len()).as_bytes());
        self.0.update(value.as_bytes());
        self
    }
    pub fn file(&mut self, label: &str, path: &Path) -> Result<&mut Self> {
        let bytes = fs::read(path)?;
        self.0
            .update(format!("\0{label}\0{}\0", bytes.len()).as_bytes());
        self.0.update(&bytes);
        Ok(self)
    }
    /// First 16 hex digits: short enough for paths, long enough not to collide.
    pub fn finish(&self) -> String {
        let digest = self.0.clone().finalize();
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }
}

/// Write `contents` to `path` through a temporary file beside it and a
/// rename, its folder made: a concurrent reader sees the old file or the
/// new one, never half of one (the cache's small records: memo.json, the
/// accelerator verdict, the remembered validation).
pub fn write_atomic(path: &Path, contents: impl AsRef<[u8]>) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)
}

/// A file's SHA-256, in hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut h = Sha256::new();
    let mut file = fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = std::io::Read::read(&mut file, &mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The ELF interpreter (PT_INTERP) of a binary, or None for a static one.
pub fn elf_interpreter(path: &Path) -> Result<Option<String>> {
    let data = fs::read(path)?;
    let bad = || Error::new(format!("{} is not a 64-bit ELF file", path.display()));
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 {
        return Err(bad());
    }
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if ph + 56 > data.len() {
            return Err(bad());
        }
        let p_type = u32::from_le_bytes(data[ph..ph + 4].try_into().unwrap());
        if p_type == 3 {
            let (off, size) = (u64_at(ph + 8), u64_at(ph + 32));
            let raw = data.get(off..off + size).ok_or_else(bad)?;
            return Ok(Some(
                String::from_utf8_lossy(raw)
                    .trim_end_matches('\0')
                    .to_string(),
            ));
        }
    }
    Ok(None)
}

/// Replace `dest` with the finished directory `staged` in one rename, so a
/// reader sees either the old complete tree or the new complete tree.
pub fn publish_dir(staged: &Path, dest: &Path) -> Result<()> {
    if dest.exists() {
        let old = dest.with_extension(format!("old-{}", std::process::id()));
        fs::rename(dest, &old)?;
        fs::rename(staged, dest)?;
        let _ = fs::remove_dir_all(&old);
    } else {
        fs::rename(staged, dest)?;
    }
    Ok(())
}

/// `s` with every character outside `[A-Za-z0-9.-]` replaced by `-`: a
/// version or identity made safe for a folder name.
pub fn safe_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Remove the staging folders `<dir>/<prefix>PID` that an interrupted run
/// left behind (their PID is gone), and say so.
pub fn sweep_staging(dir: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(prefix) else {
            continue;
        };
        let alive = pid.parse::<u32>().is_ok_and(|p| {
            p != std::process::id() && Path::new("/proc").join(p.to_string()).exists()
        });
        if !alive {
            eprintln!(
                "[lab] removing {}, left by an interrupted run",
                e.path().display()
            );
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// An empty folder of the tests' own, `<tmp>/xtask-NAME-PID` (xtask has no
/// tempfile dependency); the test removes it when done.
#[cfg(test)]
pub fn test_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("xtask-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

pub fn nproc() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_depend_on_labels_and_values() {
        let a = Key::new("k").str("x", "1").finish();
        let b = Key::new("k").str("x", "1").finish();
        let c = Key::new("k").str("x", "2").finish();
        let d = Key::new("k").str("y", "1").finish();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
        assert_eq!(a.len(), 16);
    }

    #[test]
    fn stale_staging_folders_are_swept_live_ones_kept() {
        let dir = test_dir("sweep");
        let mine = dir.join(format!(".unpack-{}", std::process::id()));
        let dead = dir.join(".unpack-999999999");
        let other = dir.join("debian-6.12");
        for d in [&mine, &dead, &other] {
            fs::create_dir_all(d).unwrap();
        }
        sweep_staging(&dir, ".unpack-");
        assert!(!dead.exists());
        // Our own PID counts as stale: a previous run of this process
        // cannot exist, so what carries our PID is leftover too.
        assert!(!mine.exists());
        assert!(other.exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn names_are_made_safe() {
        assert_eq!(safe_name("1:7.2+dfsg-7"), "1-7.2-dfsg-7");
    }

    #[test]
    fn reads_the_interpreter_of_a_dynamic_binary() {
        let exe = std::env::current_exe().unwrap();
        let interp = elf_interpreter(&exe).unwrap();
        assert!(
            interp.is_some_and(|i| i.contains("ld-linux")),
            "test binaries are dynamic"
        );
    }
}
