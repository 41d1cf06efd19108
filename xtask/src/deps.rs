//! Host prerequisites: find what is missing and, on Debian/Ubuntu as root,
//! install it; elsewhere print the exact command and stop.

use crate::util::{find_in_path, Error};
use std::path::Path;
use xshell::{cmd, Shell};

/// Something the lab needs on the host and the Debian package providing it.
pub struct Need {
    pub what: &'static str,
    pub package: &'static str,
    present: fn() -> bool,
}

fn tool(name: &'static str) -> bool {
    find_in_path(name).is_some()
}

/// The default kernel source: Debian's linux-source-6.12 tarball.
pub const DEBIAN_KERNEL_TARBALL: &str = "/usr/src/linux-source-6.12.tar.xz";
pub const DEBIAN_KERNEL_PACKAGE: &str = "linux-source-6.12";

pub fn needs(default_kernel_source: bool) -> Vec<Need> {
    let mut v = vec![
        Need {
            what: "qemu-system-x86_64",
            package: "qemu-system-x86",
            present: || tool("qemu-system-x86_64"),
        },
        Need {
            what: "ndctl",
            package: "ndctl",
            present: || tool("ndctl"),
        },
        Need {
            what: "daxctl",
            package: "daxctl",
            present: || tool("daxctl"),
        },
        Need {
            what: "busybox (static)",
            package: "busybox-static",
            present: || is_static("/bin/busybox"),
        },
        Need {
            what: "iasl (compiles the lab's ACPI table)",
            package: "acpica-tools",
            present: || tool("iasl"),
        },
        Need {
            what: "mkfs.ext4",
            package: "e2fsprogs",
            present: || tool("mke2fs"),
        },
        Need {
            what: "make",
            package: "make",
            present: || tool("make"),
        },
        Need {
            what: "gcc",
            package: "gcc",
            present: || tool("gcc"),
        },
        Need {
            what: "flex",
            package: "flex",
            present: || tool("flex"),
        },
        Need {
            what: "bison",
            package: "bison",
            present: || tool("bison"),
        },
        Need {
            what: "bc",
            package: "bc",
            present: || tool("bc"),
        },
        Need {
            what: "depmod",
            package: "kmod",
            present: || tool("depmod"),
        },
        Need {
            what: "xz",
            package: "xz-utils",
            present: || tool("xz"),
        },
        Need {
            // CONFIG_KERNEL_LZ4 compresses the bzImage with it.
            what: "lz4",
            package: "lz4",
            present: || tool("lz4"),
        },
        Need {
            what: "perl",
            package: "perl",
            present: || tool("perl"),
        },
        Need {
            what: "libelf headers",
            package: "libelf-dev",
            present: || Path::new("/usr/include/libelf.h").exists(),
        },
        Need {
            what: "OpenSSL headers",
            package: "libssl-dev",
            present: || Path::new("/usr/include/openssl/ssl.h").exists(),
        },
    ];
    if default_kernel_source {
        v.push(Need {
            what: "kernel source tarball",
            package: DEBIAN_KERNEL_PACKAGE,
            present: || Path::new(DEBIAN_KERNEL_TARBALL).exists(),
        });
    }
    v
}

/// busybox must be the static build: the initramfs carries no libc for it.
fn is_static(path: &str) -> bool {
    matches!(crate::util::elf_interpreter(Path::new(path)), Ok(None))
}

/// Make sure every need is met, installing with apt-get where we may.
pub fn ensure(default_kernel_source: bool) -> Result<(), Error> {
    let all = needs(default_kernel_source);
    let missing: Vec<&Need> = all.iter().filter(|n| !(n.present)()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut packages: Vec<&str> = missing.iter().map(|n| n.package).collect();
    packages.sort();
    packages.dedup();
    let what: Vec<&str> = missing.iter().map(|n| n.what).collect();
    let command = format!(
        "apt-get install -y --no-install-recommends {}",
        packages.join(" ")
    );
    let debian = Path::new("/etc/debian_version").exists() && tool("apt-get");
    let root = effective_uid() == 0;
    if !(debian && root) {
        return Err(Error::new(format!(
            "missing on this host: {}.\nInstall them, e.g. on Debian/Ubuntu:\n  sudo apt-get update && sudo {command}",
            what.join(", ")
        )));
    }
    eprintln!("[deps] missing: {}", what.join(", "));
    eprintln!("[deps] installing: {}", packages.join(" "));
    let sh = Shell::new()?;
    let _env = sh.push_env("DEBIAN_FRONTEND", "noninteractive");
    cmd!(sh, "apt-get update").run()?;
    cmd!(
        sh,
        "apt-get install -y --no-install-recommends {packages...}"
    )
    .run()?;
    let still: Vec<&str> = needs(default_kernel_source)
        .iter()
        .filter(|n| !(n.present)())
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
