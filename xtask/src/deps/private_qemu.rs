//! QEMU from Debian's packages, extracted into the lab's cache, for machines
//! where installing it would remove or downgrade a package the user has.
//!
//! `apt-get download` fetches the packages that an install of
//! qemu-system-x86 would unpack (the simulation's `Inst` lines: QEMU, its
//! firmware, and the libraries the machine lacks) without installing them;
//! `dpkg-deb -x` extracts each into `<cache>/qemu/debian-<version>/root`.
//! [`pmem_lab_env::qemu::Qemu`] starts that binary with the copy's library
//! path and firmware folders. The system's apt configuration and package set
//! are never changed. Staged in a sibling folder and renamed into place; an
//! interrupted fetch leaves a `.fetch-PID` folder that the next one removes.

use super::{apt, QEMU_PACKAGE};
use crate::util::{self, Error, Result};
use fs_err as fs;
use pmem_lab_env::qemu::{self, Qemu};
use std::path::{Path, PathBuf};

/// Fetch (or reuse) the private copy; its binary.
pub fn fetch(cache: &Path) -> Result<PathBuf> {
    let plan = apt::simulate(&[QEMU_PACKAGE])?;
    let version = plan
        .installs
        .iter()
        .find(|i| i.package == QEMU_PACKAGE)
        .map(|i| i.version.clone())
        .ok_or_else(|| Error::new(format!("apt plans no {QEMU_PACKAGE} to fetch")))?;
    let parent = cache.join(qemu::CACHE_DIR);
    let dest = parent.join(format!("debian-{}", util::safe_name(&version)));
    let binary = dest.join("root/usr/bin").join(qemu::PROGRAM);
    if binary.is_file() {
        return Ok(binary);
    }
    fs::create_dir_all(&parent)?;
    util::sweep_staging(&parent, ".fetch-");
    let staging = parent.join(format!(".fetch-{}", std::process::id()));
    let debs = staging.join("debs");
    fs::create_dir_all(&debs)?;
    let packages: Vec<&str> = plan.installs.iter().map(|i| i.package.as_str()).collect();
    eprintln!(
        "[deps] fetching {QEMU_PACKAGE} {version} and {} companion package(s) into {}",
        packages.len() - 1,
        dest.display()
    );
    let root = staging.join("root");
    let names = super::extract_packages(&packages, &debs, &root)?;
    publish(&staging, &names, &dest, "private")?;
    Ok(binary)
}

/// Record the packages extracted into `staging/root`, prove that its QEMU
/// starts, and publish it as `dest`.
pub fn publish(staging: &Path, names: &[String], dest: &Path, what: &str) -> Result<()> {
    fs::write(staging.join("packages.txt"), names.join("\n") + "\n")?;
    let staged = Qemu::at(staging.join("root/usr/bin").join(qemu::PROGRAM));
    let line = staged.version_line().map_err(|e| {
        Error::new(format!(
            "the extracted QEMU does not start ({e}); its packages are in {}",
            staging.display()
        ))
    })?;
    util::publish_dir(staging, dest)?;
    eprintln!("[deps] {what} QEMU ready: {line}");
    Ok(())
}
