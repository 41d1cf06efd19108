//! Which QEMU the lab runs, and how to start it.
//!
//! Three places, in this order: the binary named by `--qemu` /
//! `PMEM_LAB_QEMU`; `qemu-system-x86_64` on PATH; the lab's private copy,
//! which `cargo xtask deps` extracts from Debian's packages into the cache
//! when installing QEMU would remove or downgrade a package the user has (see
//! xtask/src/deps.rs). A private copy is a folder holding extracted packages
//! (`<root>/usr/bin/qemu-system-x86_64`, its libraries under `<root>/usr/lib`
//! and `<root>/lib`, firmware under `<root>/usr/share/{qemu,seabios}`), so
//! starting it needs the library path and `-L` for every firmware folder:
//! [`Qemu::command`] adds both, for every user of QEMU in the lab.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The binary's file name.
pub const PROGRAM: &str = "qemu-system-x86_64";

/// Where private copies live under the cache: `<cache>/qemu/<name>/root`.
pub const CACHE_DIR: &str = "qemu";

/// A QEMU the lab can start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qemu {
    pub binary: PathBuf,
    /// Extra shared-library folders (a private copy's), first on the
    /// loader's path.
    pub libraries: Vec<PathBuf>,
    /// Firmware folders passed with `-L` (a private copy's), searched
    /// before QEMU's built-in ones.
    pub firmware: Vec<PathBuf>,
}

/// A QEMU binary that cannot run the lab, and why (`--qemu`'s check).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unusable {
    pub binary: PathBuf,
    pub why: String,
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.binary.display(), self.why)
    }
}

impl std::error::Error for Unusable {}

/// Why no QEMU could be found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QemuError {
    /// `PMEM_LAB_QEMU` or `--qemu` names something that is not a file.
    NotAFile(PathBuf),
    /// Nothing on PATH and no private copy in the cache.
    NotFound { cache: PathBuf },
}

impl std::fmt::Display for QemuError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QemuError::NotAFile(p) => write!(
                f,
                "{} (PMEM_LAB_QEMU / --qemu) is not a file: name a qemu-system-x86_64 binary",
                p.display()
            ),
            QemuError::NotFound { cache } => write!(
                f,
                "no {PROGRAM} on PATH and no private copy under {}: run `cargo xtask deps`",
                cache.join(CACHE_DIR).display()
            ),
        }
    }
}

impl std::error::Error for QemuError {}

impl Qemu {
    /// A binary, with the folders of a private copy when it sits in one
    /// (`<root>/usr/bin/<binary>` next to `<root>/usr/share/qemu`, with
    /// `<root>` not `/`). A system QEMU needs neither.
    pub fn at(binary: PathBuf) -> Qemu {
        let root = binary
            .parent()
            .filter(|bin| bin.ends_with("usr/bin"))
            .and_then(|bin| bin.parent()?.parent())
            .filter(|root| *root != Path::new("/") && root.join("usr/share/qemu").is_dir())
            .map(Path::to_path_buf);
        let Some(root) = root else {
            return Qemu {
                binary,
                libraries: Vec::new(),
                firmware: Vec::new(),
            };
        };
        let arch = "x86_64-linux-gnu";
        Qemu {
            libraries: [format!("usr/lib/{arch}"), format!("lib/{arch}")]
                .iter()
                .map(|d| root.join(d))
                .filter(|d| d.is_dir())
                .collect(),
            firmware: ["usr/share/qemu", "usr/share/seabios", "usr/lib/ipxe/qemu"]
                .iter()
                .map(|d| root.join(d))
                .filter(|d| d.is_dir())
                .collect(),
            binary,
        }
    }

    /// The private copy's binary under `cache`, if one was extracted: the
    /// newest name in sort order.
    pub fn private(cache: &Path) -> Option<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(cache.join(CACHE_DIR))
            .ok()?
            .flatten()
            .map(|e| e.path().join("root/usr/bin").join(PROGRAM))
            .filter(|p| p.is_file())
            .collect();
        found.sort();
        found.pop()
    }

    /// The QEMU to use: `explicit` (from `--qemu` / `PMEM_LAB_QEMU`), else
    /// PATH, else the private copy under `cache`.
    pub fn find(explicit: Option<PathBuf>, cache: &Path) -> Result<Qemu, QemuError> {
        if let Some(p) = explicit {
            return if p.is_file() {
                Ok(Qemu::at(p))
            } else {
                Err(QemuError::NotAFile(p))
            };
        }
        crate::program(PROGRAM)
            .or_else(|| Qemu::private(cache))
            .map(Qemu::at)
            .ok_or_else(|| QemuError::NotFound {
                cache: cache.to_path_buf(),
            })
    }

    /// [`Qemu::find`] with `PMEM_LAB_QEMU` and the default cache.
    pub fn from_env() -> Result<Qemu, QemuError> {
        Qemu::find(
            crate::vars::QEMU.get().map(PathBuf::from),
            &crate::default_cache(),
        )
    }

    /// A command that starts this QEMU: the library path set and the
    /// firmware folders given, ready for the machine's own arguments.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        if !self.libraries.is_empty() {
            let mut paths = self.libraries.clone();
            if let Some(old) = std::env::var_os("LD_LIBRARY_PATH") {
                paths.extend(std::env::split_paths(&old));
            }
            if let Ok(joined) = std::env::join_paths(paths) {
                cmd.env("LD_LIBRARY_PATH", joined);
            }
        }
        cmd.args(self.firmware_args());
        cmd
    }

    /// `-L DIR` for each firmware folder.
    pub fn firmware_args(&self) -> Vec<OsString> {
        self.firmware
            .iter()
            .flat_map(|d| [OsString::from("-L"), d.clone().into_os_string()])
            .collect()
    }

    /// `qemu-system-x86_64 --version`'s first line, e.g. `QEMU emulator
    /// version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)`.
    /// When xtask already read it for this binary (PMEM_LAB_QEMU_VERSION
    /// beside PMEM_LAB_QEMU), that line, without starting QEMU.
    pub fn version_line(&self) -> std::io::Result<String> {
        if let (Some(line), Some(binary)) =
            (crate::vars::QEMU_VERSION.get_str(), crate::vars::QEMU.get())
        {
            if Path::new(&binary) == self.binary {
                return Ok(line);
            }
        }
        let out = self.command().arg("--version").output()?;
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "{} --version: {}{}",
                self.binary.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .next()
                    .map(|l| format!(": {l}"))
                    .unwrap_or_default()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string())
    }
}

impl Qemu {
    /// That this binary is a QEMU that can run the lab: `--version` says
    /// `QEMU emulator version X.Y...` and `-machine help` lists the `pc`
    /// machine, each within a few seconds. Its version line, or why not.
    /// `--qemu` is checked so before any package, kernel or VM work.
    pub fn check(&self) -> Result<String, Unusable> {
        let unusable = |why: String| Unusable {
            binary: self.binary.clone(),
            why,
        };
        let run = |arg: &[&str]| -> Result<String, Unusable> {
            let mut cmd = self.command();
            cmd.args(arg)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null());
            let mut child = cmd
                .spawn()
                .map_err(|e| unusable(format!("does not start: {e}")))?;
            let start = std::time::Instant::now();
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if start.elapsed() > std::time::Duration::from_secs(10) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(unusable(format!(
                            "{} did not answer in 10 s",
                            arg.join(" ")
                        )));
                    }
                    Ok(None) => std::thread::sleep(std::time::Duration::from_millis(5)),
                    Err(e) => return Err(unusable(e.to_string())),
                }
            }
            let mut out = String::new();
            if let Some(mut o) = child.stdout.take() {
                use std::io::Read;
                let _ = o.by_ref().take(1 << 20).read_to_string(&mut out);
            }
            Ok(out)
        };
        let version = run(&["--version"])?;
        let line = version.lines().next().unwrap_or_default().to_string();
        if !line.starts_with("QEMU emulator version ") || parse_version(&line).is_none() {
            return Err(unusable(format!(
                "is not a QEMU: `--version` printed {line:?}, not `QEMU emulator version X.Y`"
            )));
        }
        let machines = run(&["-machine", "help"])?;
        if !machines
            .lines()
            .any(|l| l.split_whitespace().next() == Some("pc"))
        {
            return Err(unusable(format!(
                "({}) lists no `pc` machine in `-machine help`: the lab needs qemu-system-x86_64",
                short_version(&line)
            )));
        }
        Ok(line)
    }
}

/// The version word of a version line: `10.0.2` from `QEMU emulator
/// version 10.0.2 (Debian ...)`; the whole line if it has another form.
pub fn short_version(line: &str) -> String {
    line.split("version ")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or(line)
        .to_string()
}

/// `(major, minor)` from a version line, `QEMU emulator version 10.0.2
/// (...)`, or from its version word, `10.0.2` (what the harness keeps):
/// the lab's one QEMU version parser.
pub fn parse_version(line: &str) -> Option<(u32, u32)> {
    let v = short_version(line);
    let mut parts = v.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_copy_brings_its_libraries_and_firmware() {
        let dir = std::env::temp_dir().join(format!("pmem-lab-env-test-{}", std::process::id()));
        let root = dir.join("qemu/debian-7.2/root");
        for d in [
            "usr/bin",
            "usr/share/qemu",
            "usr/share/seabios",
            "usr/lib/x86_64-linux-gnu",
            "lib/x86_64-linux-gnu",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let bin = root.join("usr/bin").join(PROGRAM);
        std::fs::write(&bin, b"").unwrap();
        assert_eq!(Qemu::private(&dir), Some(bin.clone()));
        let q = Qemu::at(bin.clone());
        assert_eq!(
            q.libraries,
            [
                root.join("usr/lib/x86_64-linux-gnu"),
                root.join("lib/x86_64-linux-gnu")
            ]
        );
        assert_eq!(
            q.firmware,
            [root.join("usr/share/qemu"), root.join("usr/share/seabios")]
        );
        let args = q.firmware_args();
        assert_eq!(args[0], "-L");
        assert_eq!(args[1], root.join("usr/share/qemu").into_os_string());
        let cmd = q.command();
        assert!(cmd
            .get_envs()
            .any(|(k, v)| k == "LD_LIBRARY_PATH" && v.is_some()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_system_binary_needs_nothing_extra() {
        let q = Qemu::at(PathBuf::from("/usr/bin/qemu-system-x86_64"));
        assert!(q.libraries.is_empty() && q.firmware.is_empty());
        assert_eq!(q.command().get_args().count(), 0);
    }

    #[test]
    fn an_explicit_binary_must_exist() {
        let e =
            Qemu::find(Some("/nonexistent/qemu".into()), Path::new("/nonexistent")).unwrap_err();
        assert!(e.to_string().contains("is not a file"), "{e}");
    }

    #[test]
    fn versions_parse() {
        assert_eq!(
            parse_version("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"),
            Some((7, 2))
        );
        assert_eq!(parse_version("QEMU emulator version 10.0.2"), Some((10, 0)));
        assert_eq!(parse_version("7.2.22"), Some((7, 2)));
        assert_eq!(parse_version("garbage"), None);
        assert_eq!(parse_version("QEMU emulator version x.y"), None);
        assert_eq!(
            short_version("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"),
            "7.2.22"
        );
    }

    #[test]
    fn check_refuses_what_is_not_a_qemu_for_the_lab() {
        let dir = std::env::temp_dir().join(format!("pmem-lab-qemu-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = Qemu::at(PathBuf::from("/bin/true"))
            .check()
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not a QEMU"), "{e}");
        let fake = dir.join("qemu-system-x86_64");
        std::fs::write(&fake, "#!/bin/sh\necho 'QEMU emulator version 99.1.0'\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = Qemu::at(fake.clone()).check().unwrap_err().to_string();
        assert!(e.contains("lists no `pc` machine"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
        if let Some(real) = crate::program(PROGRAM) {
            let line = Qemu::at(real).check().unwrap();
            assert!(line.starts_with("QEMU emulator version"), "{line}");
        }
    }
}
