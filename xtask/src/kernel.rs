//! The guest kernel: configure (allnoconfig + fragments + olddefconfig, then
//! check every requested option), build bzImage, modules and the nfit_test
//! modules, and publish them in the cache.
//!
//! Cache layout under `<cache>/kernel/`:
//! - `build-<tree id>/`: the O= build directory, reused for incremental builds;
//! - `<key>/`: published outputs, key = source identity + fragments + recipe;
//!   complete or absent (staged, then renamed);
//! - `build.lock`: held while building, so never two kernel builds at once.

use crate::deps::DebianKernel;
use crate::kconfig;
use crate::progress::Progress;
use crate::util::{self, Error, Key, Result};
use fs_err as fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use xshell::{cmd, Shell};

/// Bump when the build recipe changes in a way that changes the outputs.
const RECIPE: &str = "kernel-recipe-1";
/// The in-tree directory of the nfit_test modules.
const NFIT_TEST_DIR: &str = "tools/testing/nvdimm";

/// Where the kernel source comes from.
pub struct Source {
    pub dir: PathBuf,
    /// Stable identity for cache keys.
    pub identity: String,
    /// A user's tree: never written to; always re-made (make decides).
    pub user_tree: bool,
}

/// What the lab boots and loads.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub dir: PathBuf,
    pub bzimage: PathBuf,
    /// INSTALL_MOD_PATH root: holds lib/modules/<release>/ with depmod files.
    pub modules_root: PathBuf,
    /// The nfit_test set (nfit_test.ko, nfit_test_iomap.ko and the wrapped
    /// libnvdimm/nfit/... modules), kept apart from the in-tree set.
    pub nfit_test: PathBuf,
    pub release: String,
    pub config: PathBuf,
}

impl Kernel {
    /// An entry staged before System.map was kept (the poison model reads
    /// kernel symbols from it) is made again: an incremental make.
    fn complete(dir: &Path) -> bool {
        dir.join("release").is_file() && dir.join("System.map").is_file()
    }

    fn at(dir: &Path) -> Result<Kernel> {
        let release = fs::read_to_string(dir.join("release"))?;
        Ok(Kernel {
            dir: dir.to_path_buf(),
            bzimage: dir.join("bzImage"),
            modules_root: dir.join("modules"),
            nfit_test: dir.join("nfit_test"),
            release: release.trim().to_string(),
            config: dir.join("config"),
        })
    }
}

/// A kernel the lab can build: one of Debian's source packages, or a tree
/// the user names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSpec {
    Debian(DebianKernel),
    Tree(PathBuf),
}

impl KernelSpec {
    /// `debian-6.12` or `debian-6.1`.
    pub fn debian_named(s: &str) -> Result<KernelSpec> {
        let series = s.strip_prefix("debian-").unwrap_or(s);
        DebianKernel::ALL
            .into_iter()
            .find(|k| k.series() == series)
            .map(KernelSpec::Debian)
            .ok_or_else(|| {
                let known: Vec<String> = DebianKernel::ALL
                    .iter()
                    .map(|k| format!("debian-{}", k.series()))
                    .collect();
                Error::new(format!(
                    "`{s}`: Debian packages the kernels {}",
                    known.join(", ")
                ))
            })
    }

    /// A short name for folders and report columns.
    pub fn label(&self) -> String {
        match self {
            KernelSpec::Debian(k) => format!("debian-{}", k.series()),
            KernelSpec::Tree(p) => format!(
                "tree-{}",
                util::safe_name(&p.file_name().unwrap_or_default().to_string_lossy())
            ),
        }
    }

    /// The Debian source package it needs installed, if any.
    pub fn debian(&self) -> Option<DebianKernel> {
        match self {
            KernelSpec::Debian(k) => Some(*k),
            KernelSpec::Tree(_) => None,
        }
    }
}

/// The kernel source: the user's tree, or Debian's tarball unpacked once.
pub fn source(spec: &KernelSpec, cache: &Path) -> Result<Source> {
    let debian = match spec {
        KernelSpec::Tree(tree) => {
            let dir = fs::canonicalize(tree)?;
            if !dir.join("Makefile").is_file() || !dir.join("Kconfig").is_file() {
                return Err(Error::new(format!(
                    "{} does not look like a kernel tree (no Makefile/Kconfig)",
                    dir.display()
                )));
            }
            return Ok(Source {
                identity: format!("tree:{}", dir.display()),
                dir,
                user_tree: true,
            });
        }
        KernelSpec::Debian(k) => *k,
    };
    let (sh, package, format) = (Shell::new()?, debian.package(), "-f=${Version}");
    // dpkg rewrites its status file whenever a package changes: the
    // version is remembered by that file's identity (crate::memo).
    let version = crate::memo::with(cache, |memo| {
        memo.get(
            &format!("version of {package}"),
            Path::new("/var/lib/dpkg/status"),
            "",
            || Ok(cmd!(sh, "dpkg-query -W {format} {package}").read()?),
        )
    })?;
    let version = version.trim().to_string();
    let dir = cache
        .join("src")
        .join(format!("debian-{}", crate::util::safe_name(&version)));
    // An interrupted unpack left its staging folder: remove it whether or
    // not this run unpacks.
    crate::util::sweep_staging(&cache.join("src"), ".unpack-");
    if !dir.join("Makefile").is_file() {
        unpack(Path::new(debian.tarball()), &dir)?;
    }
    Ok(Source {
        dir,
        identity: format!("debian:{package}={version}"),
        user_tree: false,
    })
}

fn unpack(tarball: &Path, dest: &Path) -> Result<()> {
    let parent = dest.parent().expect("dest has a parent");
    fs::create_dir_all(parent)?;
    let staging = parent.join(format!(".unpack-{}", std::process::id()));
    fs::create_dir_all(&staging)?;
    eprintln!("[kernel] unpacking {} (once)", tarball.display());
    let sh = Shell::new()?;
    cmd!(sh, "tar -xf {tarball} -C {staging}").run()?;
    let top = fs::read_dir(&staging)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("Makefile").is_file())
        .ok_or_else(|| Error::new(format!("{} holds no kernel tree", tarball.display())))?;
    fs::rename(&top, dest)?;
    let _ = fs::remove_dir_all(&staging);
    Ok(())
}

/// Build (or reuse) the kernel for `src` with `fragments`.
pub fn ensure(src: &Source, fragments: &[PathBuf], cache: &Path, jobs: usize) -> Result<Kernel> {
    let root = cache.join("kernel");
    fs::create_dir_all(&root)?;
    let mut key = Key::new(RECIPE);
    key.str("source", &src.identity);
    for f in fragments {
        key.file("fragment", f)?;
    }
    let out = root.join(key.finish());
    if !src.user_tree && Kernel::complete(&out) {
        return Kernel::at(&out);
    }
    let lock = build_lock(&root)?;
    // The other build may have produced exactly what we need.
    if !src.user_tree && Kernel::complete(&out) {
        return Kernel::at(&out);
    }
    let build = root.join(format!(
        "build-{}",
        Key::new("tree").str("id", &src.identity).finish()
    ));
    fs::create_dir_all(&build)?;
    let log_path = root.join(format!(
        "{}.log",
        out.file_name().unwrap().to_string_lossy()
    ));
    let mut log = Log::create(&log_path)?;
    eprintln!(
        "[kernel] building {} in {} (log: {})",
        src.identity,
        build.display(),
        log_path.display()
    );

    // Only a cold build tells how many objects a full build compiles.
    let cold = !build.join("vmlinux").exists();
    let lacks = configure(src, fragments, &build, &mut log)?;
    compile(&build, &root, jobs, cold, &mut log)?;
    let nfit_dir = nfit_test_mirror(src, &build)?;
    make(
        Command::new("make")
            .arg("-C")
            .arg(&build)
            .arg(format!("M={}", nfit_dir.display()))
            .arg(format!("-j{jobs}"))
            .arg("modules"),
        "nfit_test",
        40,
        &mut log,
    )?;
    stage(&build, &nfit_dir, &out, &lacks, &mut log)?;
    drop(lock);
    Kernel::at(&out)
}

/// The lock that keeps two kernel builds from running at once (held while
/// the file is open); waits, saying so, while another build holds it.
fn build_lock(root: &Path) -> Result<fs::File> {
    let lock_path = root.join("build.lock");
    let lock = fs::File::create(&lock_path)?;
    if lock.try_lock().is_err() {
        eprintln!(
            "[kernel] another kernel build is running; waiting for it ({})",
            lock_path.display()
        );
        lock.lock()?;
    }
    Ok(lock)
}

/// `make bzImage modules` in `build`, its progress estimated from the last
/// cold build's object count; a `cold` build records its count and time
/// (for `cargo xtask bench`) under `root`.
fn compile(build: &Path, root: &Path, jobs: usize, cold: bool, log: &mut Log) -> Result<()> {
    let count_file = root.join("objects.count");
    let estimate = fs::read_to_string(&count_file)
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let compile_start = std::time::Instant::now();
    let objects = make(
        Command::new("make")
            .arg("-C")
            .arg(build)
            .arg(format!("-j{jobs}"))
            .args(["bzImage", "modules"]),
        "compiling",
        // Measured: 1517 objects for the default fragment on 6.12.
        estimate.unwrap_or(1517),
        log,
    )?;
    if cold {
        let _ = fs::write(&count_file, objects.to_string());
        // For `cargo xtask bench`: what a cold build costs on this machine.
        let _ = fs::write(
            root.join("cold-build.txt"),
            format!("{} {objects}\n", compile_start.elapsed().as_secs()),
        );
    }
    Ok(())
}

/// allnoconfig + fragments + olddefconfig, then check every request. The
/// options the tree does not define at all come back (see
/// [`kconfig::split_unmet`]); any other unmet request is an error.
fn configure(
    src: &Source,
    fragments: &[PathBuf],
    build: &Path,
    log: &mut Log,
) -> Result<Vec<String>> {
    let make_src = |target: &str| {
        let mut c = Command::new("make");
        c.arg("-C")
            .arg(&src.dir)
            .arg(format!("O={}", build.display()))
            .arg(target);
        c
    };
    log.run(&mut make_src("allnoconfig"), "configure")?;
    let mut requests = Vec::new();
    let dot = build.join(".config");
    let mut config = fs::read_to_string(&dot)?;
    for f in fragments {
        let text = fs::read_to_string(f)?;
        requests.extend(
            kconfig::parse(&text).map_err(|e| Error::new(format!("{}: {e}", f.display())))?,
        );
        config.push_str(&text);
    }
    fs::write(&dot, config)?;
    log.run(&mut make_src("olddefconfig"), "configure")?;
    let result = fs::read_to_string(&dot)?;
    let defined = kconfig::defined_symbols(&src.dir)?;
    let (lacks, unmet) = kconfig::split_unmet(&requests, &result, &defined);
    if !unmet.is_empty() {
        return Err(Error::new(format!(
            "the kernel config lacks options the lab needs ({}):\n  {}\nFix the fragment in images/kernel/ or the tree's Kconfig dependencies.",
            build.join(".config").display(),
            unmet.join("\n  ")
        )));
    }
    if !lacks.is_empty() {
        eprintln!(
            "[kernel] this kernel has no {} (its Kconfig does not define them): cases that need them are skipped",
            lacks.join(", ")
        );
    }
    Ok(lacks)
}

/// Source directories the nfit_test build compiles (its Kbuild reaches
/// `../../../drivers/...` from its own directory).
const NFIT_TEST_SOURCES: [&str; 4] = [
    NFIT_TEST_DIR,
    "drivers/nvdimm",
    "drivers/acpi/nfit",
    "drivers/dax",
];

/// Kbuild writes external-module objects next to their sources, and Linux
/// 6.12 has no MO= to redirect them. So nfit_test is built from a mirror of
/// the directories it compiles, inside the build dir: the source tree (a
/// user's, or the cached Debian one) is never written to. Files are copied
/// only when their content changed, which keeps the build incremental.
fn nfit_test_mirror(src: &Source, build: &Path) -> Result<PathBuf> {
    let mirror = build.join("nfit-src");
    for dir in NFIT_TEST_SOURCES {
        copy_changed(&src.dir.join(dir), &mirror.join(dir))?;
    }
    Ok(mirror.join(NFIT_TEST_DIR))
}

fn copy_changed(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)?.flatten() {
        let (src, dest) = (entry.path(), to.join(entry.file_name()));
        if src.is_dir() {
            copy_changed(&src, &dest)?;
        } else if src.is_file() && fs::read(&dest).ok() != fs::read(&src).ok() {
            fs::copy(&src, &dest)?;
        }
    }
    Ok(())
}

fn find_modules(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir)?.flatten() {
        let p = entry.path();
        if p.is_dir() {
            find_modules(&p, out)?;
        } else if p.extension().is_some_and(|e| e == "ko") {
            out.push(p);
        }
    }
    Ok(())
}

fn stage(build: &Path, nfit_dir: &Path, out: &Path, lacks: &[String], log: &mut Log) -> Result<()> {
    let staging = out.with_extension(format!("staging-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(staging.join("nfit_test"))?;
    let sh = Shell::new()?;
    let release = cmd!(sh, "make -s -C {build} kernelrelease").read()?;
    let bz = build.join("arch/x86/boot/bzImage");
    fs::copy(&bz, staging.join("bzImage"))?;
    fs::copy(build.join(".config"), staging.join("config"))?;
    fs::copy(build.join("System.map"), staging.join("System.map"))?;
    log.run(
        Command::new("make")
            .arg("-C")
            .arg(build)
            .arg(format!(
                "INSTALL_MOD_PATH={}",
                staging.join("modules").display()
            ))
            .arg("INSTALL_MOD_STRIP=1")
            .arg("modules_install"),
        "modules_install",
    )?;
    let mut modules = Vec::new();
    find_modules(nfit_dir, &mut modules)?;
    for p in &modules {
        fs::copy(p, staging.join("nfit_test").join(p.file_name().unwrap()))?;
    }
    if modules.is_empty() {
        return Err(Error::new(format!(
            "the nfit_test build produced no modules in {}",
            nfit_dir.display()
        )));
    }
    fs::write(staging.join("release"), release.trim())?;
    // The fragment's options this kernel does not have (see `configure`).
    fs::write(staging.join("lacks"), lacks.join("\n"))?;
    util::publish_dir(&staging, out)
}

/// The build log file; every command's output goes here, not to the terminal.
struct Log {
    file: fs::File,
    path: PathBuf,
}

impl Log {
    fn create(path: &Path) -> Result<Log> {
        Ok(Log {
            file: fs::File::create(path)?,
            path: path.to_path_buf(),
        })
    }

    fn run(&mut self, cmd: &mut Command, phase: &str) -> Result<()> {
        make(cmd, phase, 0, self).map(|_| ())
    }

    fn failure(&self, what: &str) -> Error {
        let text = fs::read_to_string(&self.path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(25)..].join("\n  ");
        Error::new(format!(
            "{what}\nlast lines of {}:\n  {tail}",
            self.path.display()
        ))
    }
}

/// Run a make command with output to the log and a live progress line.
/// Returns how many objects it compiled.
fn make(cmd: &mut Command, phase: &str, estimate: usize, log: &mut Log) -> Result<usize> {
    let _ = writeln!(log.file, "$ {}", util::render(cmd));
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::new(format!("cannot run make: {e}")))?;
    // Merge stderr into the log from its own thread.
    let mut err_log = log.file.try_clone()?;
    let stderr = child.stderr.take().expect("piped");
    let err_thread = std::thread::spawn(move || {
        for line in BufReader::new(stderr)
            .lines()
            .map_while(std::result::Result::ok)
        {
            let _ = writeln!(err_log, "{line}");
        }
    });
    let mut progress = Progress::new("kernel", phase, estimate);
    let mut compiled = 0;
    for line in BufReader::new(child.stdout.take().expect("piped"))
        .lines()
        .map_while(std::result::Result::ok)
    {
        let _ = writeln!(log.file, "{line}");
        if line.starts_with("  CC ") || line.starts_with("  AS ") {
            compiled += 1;
            progress.tick(compiled);
        }
    }
    let _ = err_thread.join();
    let status = child.wait()?;
    progress.done(compiled);
    if !status.success() {
        return Err(log.failure(&format!("{} failed ({status})", util::render(cmd))));
    }
    Ok(compiled)
}
