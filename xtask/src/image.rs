//! The guest image: an uncompressed newc initramfs, built without root.
//!
//! Contents: busybox-static and its applet links, the programs listed in
//! images/initramfs/files.txt with their shared-library closure, the lab's
//! guest agent, images/initramfs/{init,fstab}, the kernel's modules (in-tree set under
//! /lib/modules/<release>, nfit_test set under /lib/modules/nfit_test), and a
//! /dev/console node (a cpio entry needs no mknod, hence no root).
//!
//! Uncompressed: measured under TCG (docs/performance.md), the kernel's gzip
//! inflate of this image costs about 0.45 s of every boot, more than reading
//! the larger file; the cache keeps one copy per key.
//!
//! Published as `<cache>/images/<key>.cpio`, key = hash of every guest
//! path, mode and input file's content, so an unchanged recipe reuses the
//! image and any change (a new ndctl from apt, a rebuilt agent, another
//! kernel) makes a new one. The slow parts of computing it — `ldd` of every
//! program, `dpkg -L` of every package, hashing every file — are remembered
//! by the identity of the files that decide them ([`crate::memo`], kept in
//! `<cache>/memo.json`), so a warm run only stats the inputs.

use crate::kernel::Kernel;
use crate::memo::{self, Memo};
use crate::util::{Error, Key, Result};
use fs_err as fs;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use xshell::{cmd, Shell};

const RECIPE: &str = "image-recipe-3";
const BUSYBOX: &str = "/bin/busybox";
const AGENT_GUEST_PATH: &str = "sbin/pmem-lab-agent";

/// One thing in the archive, by guest path (no leading slash).
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Dir,
    File { host: PathBuf, mode: u32 },
    Symlink(String),
    CharDev { major: u32, minor: u32 },
}

/// Build the image into `out` unconditionally (for the benchmark).
pub fn build_to(workspace: &Path, cache: &Path, kernel: &Kernel, out: &Path) -> Result<()> {
    let agent = &crate::binaries::get(workspace)?.agent;
    let tree = memo::with(cache, |memo| collect(workspace, kernel, agent, memo))?;
    write_cpio(&tree, out)
}

/// Build (or reuse) the initramfs for `kernel`. Returns its path.
pub fn ensure(workspace: &Path, cache: &Path, kernel: &Kernel) -> Result<PathBuf> {
    let agent = &crate::binaries::get(workspace)?.agent;
    let (tree, key) = memo::with(cache, |memo| {
        let tree = collect(workspace, kernel, agent, memo)?;
        let mut key = Key::new(RECIPE);
        for (guest, node) in &tree {
            match node {
                Node::File { host, mode } => {
                    let digest = memo.get("sha256", host, "", || crate::util::sha256_file(host))?;
                    key.str("file", guest)
                        .str("mode", &mode.to_string())
                        .str("content", &digest);
                }
                other => {
                    key.str("node", &format!("{guest} {other:?}"));
                }
            }
        }
        Ok((tree, key.finish()))
    })?;
    let dir = cache.join("images");
    fs::create_dir_all(&dir)?;
    let out = dir.join(format!("{key}.cpio"));
    if out.is_file() {
        return Ok(out);
    }
    eprintln!(
        "[image] building {} ({} entries)",
        out.display(),
        tree.len()
    );
    let tmp = out.with_extension(format!("tmp-{}", std::process::id()));
    write_cpio(&tree, &tmp)?;
    fs::rename(&tmp, &out)?;
    Ok(out)
}

/// What else a library closure depends on: the loader's cache and search
/// path (a new library installed or LD_LIBRARY_PATH set resolve anew).
fn ldd_context() -> String {
    format!(
        "ld.so.cache={} LD_LIBRARY_PATH={}",
        memo::identity(Path::new("/etc/ld.so.cache")).unwrap_or_default(),
        std::env::var("LD_LIBRARY_PATH").unwrap_or_default()
    )
}

fn collect(
    workspace: &Path,
    kernel: &Kernel,
    agent: &Path,
    memo: &mut Memo,
) -> Result<BTreeMap<String, Node>> {
    let mut tree = BTreeMap::new();
    let ldd = ldd_context();
    for d in [
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "mnt",
        "root",
        "etc",
        "sys/kernel/debug",
    ] {
        add_dir(&mut tree, d);
    }
    tree.insert("dev/console".into(), Node::CharDev { major: 5, minor: 1 });
    let recipe = workspace.join("images/initramfs");
    add_file(&mut tree, "init", &recipe.join("init"), 0o755);
    add_file(&mut tree, "etc/fstab", &recipe.join("fstab"), 0o644);
    add_program(&mut tree, agent, AGENT_GUEST_PATH, memo, &ldd)?;

    add_listed(
        &mut tree,
        &workspace.join("images/initramfs/files.txt"),
        memo,
        &ldd,
    )?;

    // busybox last: its applets fill only the names nothing else took.
    add_file(&mut tree, "bin/busybox", Path::new(BUSYBOX), 0o755);
    let applets = memo.get("applets", Path::new(BUSYBOX), "", || {
        let sh = Shell::new()?;
        Ok(cmd!(sh, "{BUSYBOX} --list-full").read()?)
    })?;
    for applet in applets.lines().map(str::trim).filter(|a| !a.is_empty()) {
        if !tree.contains_key(applet) {
            let depth = applet.matches('/').count();
            let target = format!("{}bin/busybox", "../".repeat(depth));
            add_parents(&mut tree, applet);
            tree.insert(applet.to_string(), Node::Symlink(target));
        }
    }

    add_modules(&mut tree, kernel)?;
    Ok(tree)
}

/// What images/initramfs/files.txt (`list`) names: `package NAME [except
/// PROGRAM...]` lines and `HOST [GUEST]` programs, each with its libraries.
fn add_listed(
    tree: &mut BTreeMap<String, Node>,
    list: &Path,
    memo: &mut Memo,
    ldd: &str,
) -> Result<()> {
    let text = fs::read_to_string(list)?;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(words) = line.strip_prefix("package ") {
            let mut words = words.split_whitespace();
            let package = words.next().unwrap_or_default();
            let except: Vec<&str> = match words.next() {
                None => Vec::new(),
                Some("except") => words.collect(),
                Some(other) => {
                    return Err(Error::new(format!(
                        "{}:{}: `{other}`: write `package NAME [except PROGRAM...]`",
                        list.display(),
                        i + 1
                    )))
                }
            };
            add_package(tree, package, &except, memo, ldd)
                .map_err(|e| Error::new(format!("{}:{}: {e}", list.display(), i + 1)))?;
            continue;
        }
        let mut words = line.split_whitespace();
        let host = PathBuf::from(words.next().unwrap());
        let guest = words
            .next()
            .unwrap_or(line)
            .trim_start_matches('/')
            .to_string();
        if !host.is_file() {
            return Err(Error::new(format!(
                "{}:{}: {} does not exist on this host (run `cargo xtask deps`)",
                list.display(),
                i + 1,
                host.display()
            )));
        }
        add_program(tree, &host, &guest, memo, ldd)?;
    }
    Ok(())
}

fn add_modules(tree: &mut BTreeMap<String, Node>, kernel: &Kernel) -> Result<()> {
    let base = kernel
        .modules_root
        .join("lib/modules")
        .join(&kernel.release);
    let guest_base = format!("lib/modules/{}", kernel.release);
    add_tree(tree, &base, &guest_base)?;
    for entry in fs::read_dir(&kernel.nfit_test)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        add_file(
            tree,
            &format!("lib/modules/nfit_test/{name}"),
            &entry.path(),
            0o644,
        );
    }
    Ok(())
}

/// Mirror a host directory (files and directories; symlinks such as
/// modules/<rel>/build into the build tree are skipped).
fn add_tree(tree: &mut BTreeMap<String, Node>, host: &Path, guest: &str) -> Result<()> {
    add_dir(tree, guest);
    let mut entries: Vec<_> = fs::read_dir(host)?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let p = entry.path();
        let g = format!("{guest}/{}", entry.file_name().to_string_lossy());
        let meta = fs::symlink_metadata(&p)?;
        if meta.is_dir() {
            add_tree(tree, &p, &g)?;
        } else if meta.is_file() {
            add_file(tree, &g, &p, 0o644);
        }
    }
    Ok(())
}

/// Every program a Debian package ships in /bin, /sbin, /usr/bin or
/// /usr/sbin (`dpkg -L`) but those named in `except`, at the same paths in
/// the guest, with its libraries; the package's symlinks stay symlinks
/// (kmod's `modprobe -> /bin/kmod`).
fn add_package(
    tree: &mut BTreeMap<String, Node>,
    package: &str,
    except: &[&str],
    memo: &mut Memo,
    ldd: &str,
) -> Result<()> {
    let dpkg_l = || {
        let sh = Shell::new()?;
        cmd!(sh, "dpkg -L {package}").quiet().read().map_err(|_| {
            Error::new(format!(
                "package {package} is not installed (run `cargo xtask deps`)"
            ))
        })
    };
    // dpkg rewrites a package's file list whenever it installs the package.
    let listing = match dpkg_list_file(package) {
        Some(list) => memo.get("dpkg -L", &list, "", dpkg_l)?,
        None => dpkg_l()?,
    };
    let mut programs = 0;
    for path in package_programs(&listing) {
        let host = Path::new(path);
        if host
            .file_name()
            .is_some_and(|n| except.iter().any(|e| n == *e))
        {
            continue;
        }
        let guest = path.trim_start_matches('/');
        let meta = fs::symlink_metadata(host)?;
        if meta.file_type().is_symlink() {
            let target = fs::read_link(host)?;
            add_parents(tree, guest);
            tree.insert(
                guest.to_string(),
                Node::Symlink(target.to_string_lossy().into_owned()),
            );
        } else if meta.is_file() {
            add_program(tree, host, guest, memo, ldd)?;
            programs += 1;
        }
    }
    if programs == 0 {
        return Err(Error::new(format!("package {package} ships no program")));
    }
    Ok(())
}

/// dpkg's list of a package's files: `<pkg>.list`, or `<pkg>:<arch>.list`
/// for a multi-arch package.
fn dpkg_list_file(package: &str) -> Option<PathBuf> {
    let info = Path::new("/var/lib/dpkg/info");
    let plain = info.join(format!("{package}.list"));
    if plain.is_file() {
        return Some(plain);
    }
    let prefix = format!("{package}:");
    std::fs::read_dir(info)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".list"))
        })
}

/// The program paths in `dpkg -L` output.
fn package_programs(listing: &str) -> Vec<&str> {
    listing
        .lines()
        .map(str::trim)
        .filter(|p| {
            ["/bin/", "/sbin/", "/usr/bin/", "/usr/sbin/"]
                .iter()
                .any(|d| {
                    p.strip_prefix(d)
                        .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'))
                })
        })
        .collect()
}

/// A program and, if dynamic, its loader and libraries at the paths ldd
/// reports (the guest's loader searches the same default directories).
fn add_program(
    tree: &mut BTreeMap<String, Node>,
    host: &Path,
    guest: &str,
    memo: &mut Memo,
    ldd: &str,
) -> Result<()> {
    if !pmem_lab_env::ldd::is_elf(host) {
        // A script or a configuration file: as it is.
        let mode = if fs::metadata(host)?.permissions().mode() & 0o111 != 0 {
            0o755
        } else {
            0o644
        };
        add_file(tree, guest, host, mode);
        return Ok(());
    }
    add_file(tree, guest, host, 0o755);
    // A static program has an empty closure.
    let closure = memo.get("ldd", host, ldd, || {
        let libs = pmem_lab_env::ldd::closure(host).map_err(|e| Error::new(e.to_string()))?;
        Ok(libs
            .iter()
            .map(|l| l.display().to_string())
            .collect::<Vec<_>>()
            .join("\n"))
    })?;
    for lib in closure.lines().filter(|l| !l.is_empty()).map(Path::new) {
        let real = fs::canonicalize(lib)?;
        add_file(
            tree,
            lib.to_string_lossy().trim_start_matches('/'),
            &real,
            0o755,
        );
    }
    Ok(())
}

fn add_parents(tree: &mut BTreeMap<String, Node>, guest: &str) {
    let mut prefix = String::new();
    let parts: Vec<&str> = guest.split('/').collect();
    for part in &parts[..parts.len() - 1] {
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(part);
        tree.entry(prefix.clone()).or_insert(Node::Dir);
    }
}

fn add_dir(tree: &mut BTreeMap<String, Node>, guest: &str) {
    add_parents(tree, guest);
    tree.entry(guest.to_string()).or_insert(Node::Dir);
}

fn add_file(tree: &mut BTreeMap<String, Node>, guest: &str, host: &Path, mode: u32) {
    add_parents(tree, guest);
    tree.insert(
        guest.to_string(),
        Node::File {
            host: host.to_path_buf(),
            mode,
        },
    );
}

/// Write the archive. BTreeMap order puts every directory before its
/// contents, which the kernel's unpacker needs.
fn write_cpio(tree: &BTreeMap<String, Node>, path: &Path) -> Result<()> {
    let file = fs::File::create(path)?;
    let mut out = std::io::BufWriter::new(file);
    for (ino, (name, node)) in tree.iter().enumerate() {
        let b = cpio::newc::Builder::new(name)
            .ino(ino as u32 + 1)
            .uid(0)
            .gid(0);
        let (b, data): (_, Vec<u8>) = match node {
            Node::Dir => (b.mode(0o040755).nlink(2), Vec::new()),
            Node::File { host, mode } => (b.mode(0o100000 | mode), fs::read(host)?),
            Node::Symlink(target) => (b.mode(0o120777), target.as_bytes().to_vec()),
            Node::CharDev { major, minor } => (
                b.mode(0o020600).rdev_major(*major).rdev_minor(*minor),
                Vec::new(),
            ),
        };
        let mut w = b.write(&mut out, data.len() as u32);
        w.write_all(&data)?;
        w.finish()?;
    }
    cpio::newc::trailer(&mut out)?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_package_listing_yields_its_programs() {
        let listing = "/.\n/bin\n/bin/dash\n/usr/share/man/man1/dash.1.gz\n/usr/bin/b2sum\n/sbin/x/y\n/bin/sh\n";
        assert_eq!(
            package_programs(listing),
            ["/bin/dash", "/usr/bin/b2sum", "/bin/sh"]
        );
    }

    #[test]
    fn parents_come_before_children() {
        let mut tree = BTreeMap::new();
        add_file(&mut tree, "usr/lib/x/libc.so.6", Path::new("/x"), 0o755);
        let names: Vec<_> = tree.keys().cloned().collect();
        assert_eq!(
            names,
            ["usr", "usr/lib", "usr/lib/x", "usr/lib/x/libc.so.6"]
        );
    }
}
