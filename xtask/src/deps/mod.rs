//! Host prerequisites: find what is missing and, on Debian/Ubuntu as root,
//! install it; elsewhere print the exact command and stop.
//!
//! The machine is the user's: before installing, the lab simulates the
//! install ([`apt`]) and never lets apt remove or downgrade a package. When
//! only QEMU would (a newer qemu-utils from backports breaks Debian 12's
//! qemu-system-common, say), QEMU comes from Debian's packages extracted into
//! the lab's cache instead ([`private_qemu`]); anything else stops before any
//! change, naming the conflict and what the user can do.

pub mod apt;
pub mod backports;
pub mod private_qemu;

use crate::util::{find_in_path, Error};
use pmem_lab_env::qemu::Qemu;
use std::path::{Path, PathBuf};
use xshell::{cmd, Shell};

/// Something the lab needs on the host and the Debian package providing it.
#[derive(Clone, Copy)]
pub struct Need {
    pub what: &'static str,
    pub package: &'static str,
    present: Present,
}

/// How the lab tells that a need is met.
#[derive(Clone, Copy)]
enum Present {
    /// A program on PATH.
    Tool(&'static str),
    /// The package is installed (the guest's userspace copies from it).
    Installed,
    /// A file (headers, a source tarball).
    File(&'static str),
    /// A statically linked program.
    Static(&'static str),
    /// A QEMU the lab can run: the user's choice, the system's or the
    /// cache's private copy.
    Qemu,
}

impl Need {
    const fn new(what: &'static str, package: &'static str, present: Present) -> Need {
        Need {
            what,
            package,
            present,
        }
    }

    fn met(&self, h: &Host) -> bool {
        match self.present {
            Present::Tool(t) => tool(t),
            Present::Installed => installed(self.package),
            Present::File(f) => Path::new(f).exists(),
            Present::Static(p) => is_static(p),
            Present::Qemu => Qemu::find(h.qemu.clone(), &h.cache).is_ok(),
        }
    }
}

/// What the needs are checked against: the user's choice of QEMU and the
/// cache that may hold the lab's private copy.
pub struct Host {
    pub qemu: Option<PathBuf>,
    pub cache: PathBuf,
}

/// The QEMU package: the one need that has a fallback (see [`private_qemu`]).
pub const QEMU_PACKAGE: &str = "qemu-system-x86";

fn tool(name: &'static str) -> bool {
    find_in_path(name).is_some()
}

/// The kernel sources Debian 12 packages: both long-term kernels, as
/// tarballs under /usr/src. 6.12 is the lab's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DebianKernel {
    V6_12,
    V6_1,
}

impl DebianKernel {
    pub const ALL: [DebianKernel; 2] = [DebianKernel::V6_12, DebianKernel::V6_1];

    /// `6.12`: what `--kernel debian-6.12` names.
    pub fn series(self) -> &'static str {
        match self {
            DebianKernel::V6_12 => "6.12",
            DebianKernel::V6_1 => "6.1",
        }
    }

    pub fn package(self) -> &'static str {
        match self {
            DebianKernel::V6_12 => "linux-source-6.12",
            DebianKernel::V6_1 => "linux-source-6.1",
        }
    }

    pub fn tarball(self) -> &'static str {
        match self {
            DebianKernel::V6_12 => "/usr/src/linux-source-6.12.tar.xz",
            DebianKernel::V6_1 => "/usr/src/linux-source-6.1.tar.xz",
        }
    }

    fn need(self) -> Need {
        let what = match self {
            DebianKernel::V6_12 => "kernel source tarball (6.12)",
            DebianKernel::V6_1 => "kernel source tarball (6.1)",
        };
        Need::new(what, self.package(), Present::File(self.tarball()))
    }
}

/// What the lab needs on the host, whatever kernel it builds.
const NEEDS: &[Need] = &[
    Need::new("qemu-system-x86_64", QEMU_PACKAGE, Present::Qemu),
    Need::new("ndctl", "ndctl", Present::Tool("ndctl")),
    Need::new("daxctl", "daxctl", Present::Tool("daxctl")),
    Need::new(
        "busybox (static)",
        "busybox-static",
        Present::Static("/bin/busybox"),
    ),
    Need::new(
        "iasl (compiles the lab's ACPI table)",
        "acpica-tools",
        Present::Tool("iasl"),
    ),
    Need::new("mkfs.ext4", "e2fsprogs", Present::Tool("mke2fs")),
    Need::new("make", "make", Present::Tool("make")),
    Need::new("gcc", "gcc", Present::Tool("gcc")),
    Need::new(
        "bwrap (the sandbox a case's C sources compile in)",
        "bubblewrap",
        Present::Tool("bwrap"),
    ),
    Need::new("flex", "flex", Present::Tool("flex")),
    Need::new("bison", "bison", Present::Tool("bison")),
    Need::new("bc", "bc", Present::Tool("bc")),
    Need::new("depmod", "kmod", Present::Tool("depmod")),
    // The guest's userspace (images/initramfs/files.txt): the
    // distribution's tools where they can change an outcome.
    Need::new("jq (guest)", "jq", Present::Installed),
    Need::new("xfsprogs (guest)", "xfsprogs", Present::Installed),
    Need::new("bash (guest)", "bash", Present::Installed),
    Need::new("dash (guest)", "dash", Present::Installed),
    Need::new("util-linux (guest)", "util-linux", Present::Installed),
    Need::new("mount (guest)", "mount", Present::Installed),
    Need::new("xz", "xz-utils", Present::Tool("xz")),
    // CONFIG_KERNEL_LZ4 compresses the bzImage with it.
    Need::new("lz4", "lz4", Present::Tool("lz4")),
    // `cargo xtask bisect` and its test drive git.
    Need::new("git", "git", Present::Tool("git")),
    Need::new("perl", "perl", Present::Tool("perl")),
    Need::new(
        "libelf headers",
        "libelf-dev",
        Present::File("/usr/include/libelf.h"),
    ),
    Need::new(
        "OpenSSL headers",
        "libssl-dev",
        Present::File("/usr/include/openssl/ssl.h"),
    ),
];

/// What the lab needs on the host, with the Debian kernel sources the run
/// builds.
pub fn needs(sources: &[DebianKernel]) -> Vec<Need> {
    let mut v = NEEDS.to_vec();
    v.extend(sources.iter().map(|k| k.need()));
    v
}

/// What dpkg has installed, asked once for every package (one
/// `dpkg-query`, about 10 ms; one per package cost 20-50 ms each on every
/// run) and again after the lab installs something ([`ensure`]).
static INSTALLED: std::sync::Mutex<Option<Vec<String>>> = std::sync::Mutex::new(None);

/// Whether dpkg has `package` installed.
fn installed(package: &str) -> bool {
    INSTALLED
        .lock()
        .unwrap()
        .get_or_insert_with(|| {
            std::process::Command::new("dpkg-query")
                .args(["-W", "-f=${Package} ${Status}\n"])
                .output()
                .map(|o| installed_of(&String::from_utf8_lossy(&o.stdout)))
                .unwrap_or_default()
        })
        .iter()
        .any(|p| p == package)
}

/// The installed packages in `dpkg-query -W -f='${Package} ${Status}\n'`
/// output (a package removed but not purged is left out).
fn installed_of(out: &str) -> Vec<String> {
    out.lines()
        .filter(|l| l.ends_with(" installed"))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// busybox must be the static build: the initramfs carries no libc for it.
fn is_static(path: &str) -> bool {
    matches!(crate::util::elf_interpreter(Path::new(path)), Ok(None))
}

fn missing(host: &Host, sources: &[DebianKernel]) -> Vec<Need> {
    needs(sources)
        .into_iter()
        .filter(|n| !n.met(host))
        .collect()
}

/// Make sure every need is met, installing with apt-get where we may and
/// never removing or downgrading anything.
pub fn ensure(host: &Host, sources: &[DebianKernel]) -> Result<(), Error> {
    let missing = missing(host, sources);
    if missing.is_empty() {
        return Ok(());
    }
    let mut packages: Vec<&str> = missing.iter().map(|n| n.package).collect();
    packages.sort();
    packages.dedup();
    let what: Vec<&str> = missing.iter().map(|n| n.what).collect();
    let debian = Path::new("/etc/debian_version").exists() && tool("apt-get");
    let root = effective_uid() == 0;
    if !(debian && root) {
        return Err(Error::new(format!(
            "missing on this host: {}.\nInstall them, e.g. on Debian/Ubuntu:\n  sudo apt-get update && \
             sudo apt-get install --no-install-recommends {}",
            what.join(", "),
            packages.join(" ")
        )));
    }
    eprintln!("[deps] missing: {}", what.join(", "));
    let sh = Shell::new()?;
    let _env = sh.push_env("DEBIAN_FRONTEND", "noninteractive");
    cmd!(sh, "apt-get update").run()?;
    let (install, private) = choose(&packages)?;
    if !install.is_empty() {
        eprintln!("[deps] installing: {}", install.join(" "));
        cmd!(
            sh,
            "apt-get install -y --no-install-recommends {install...}"
        )
        .run()?;
    }
    if private {
        private_qemu::fetch(&host.cache)?;
    }
    *INSTALLED.lock().unwrap() = None;
    let still: Vec<&str> = self::missing(host, sources)
        .iter()
        .map(|n| n.what)
        .collect();
    if !still.is_empty() {
        return Err(Error::new(format!(
            "still missing after apt-get: {}",
            still.join(", ")
        )));
    }
    Ok(())
}

/// Which packages apt may install, and whether QEMU must come from the
/// lab's private copy instead. Errs, before anything changed, when a
/// package other than QEMU would remove or downgrade something.
fn choose<'p>(packages: &[&'p str]) -> Result<(Vec<&'p str>, bool), Error> {
    if apt::simulate(packages)?.harm(apt::older).is_empty() {
        return Ok((packages.to_vec(), false));
    }
    // Find the culprits one by one.
    let mut harmful = Vec::new();
    for p in packages {
        let harm = apt::simulate(&[p])?.harm(apt::older);
        if !harm.is_empty() {
            harmful.push((*p, harm));
        }
    }
    let others: Vec<&(&str, Vec<String>)> =
        harmful.iter().filter(|(p, _)| *p != QEMU_PACKAGE).collect();
    let rest: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !harmful.iter().any(|(h, _)| h == p))
        .collect();
    if others.is_empty() && (rest.is_empty() || apt::simulate(&rest)?.harm(apt::older).is_empty()) {
        let (_, harm) = &harmful[0];
        eprintln!(
            "[deps] installing {QEMU_PACKAGE} would {}: the lab never removes or downgrades your \
             packages, so it runs QEMU from Debian's packages extracted into its cache instead",
            harm.join(", ")
        );
        return Ok((rest, true));
    }
    let lines: Vec<String> = harmful
        .iter()
        .map(|(p, harm)| format!("  - installing {p} would {}", harm.join(", ")))
        .collect();
    Err(Error::new(format!(
        "nothing was installed: the lab never removes or downgrades your packages, and\n{}\n\
         What you can do: install those packages yourself from a suite that matches what you have \
         (e.g. `apt-get install -t bookworm-backports PACKAGE` if your sources list backports), or \
         remove the conflicting packages yourself if you no longer need them; then run the lab again.",
        lines.join("\n")
    )))
}

/// `apt-get download` `packages` into `debs` and extract each into `root`
/// (`dpkg-deb -x`): their files without installing anything. The `.deb`s
/// are removed afterwards; returns their file names.
pub fn extract_packages(packages: &[&str], debs: &Path, root: &Path) -> Result<Vec<String>, Error> {
    let sh = Shell::new()?;
    sh.change_dir(debs);
    cmd!(sh, "apt-get download {packages...}").run()?;
    extract_debs(debs, root)
}

/// Extract every `.deb` in `debs` into `root` and remove them; their names.
pub fn extract_debs(debs: &Path, root: &Path) -> Result<Vec<String>, Error> {
    let sh = Shell::new()?;
    let mut names = Vec::new();
    for deb in fs_err::read_dir(debs)?.flatten() {
        let deb = deb.path();
        cmd!(sh, "dpkg-deb -x {deb} {root}").quiet().run()?;
        names.push(
            deb.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
        );
    }
    names.sort();
    let _ = std::fs::remove_dir_all(debs);
    Ok(names)
}

fn effective_uid() -> u32 {
    // /proc/self/status avoids a libc dependency for one number.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_installed_packages_are_read_as_installed() {
        let out = "jq install ok installed\nxfsprogs deinstall ok config-files\nbash install ok installed\n";
        assert_eq!(installed_of(out), ["jq", "bash"]);
        assert!(installed_of("").is_empty());
    }
}
