//! `cargo xtask lab`: host deps -> case validation -> kernel -> image ->
//! accelerator -> run the cases (the harness's `lab` test target).

use crate::util::{self, Error, Result};
use crate::{accel, deps, image, kernel, Options};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Everything a VM run needs, built or reused.
pub struct Built {
    pub kernel: kernel::Kernel,
    pub initrd: PathBuf,
}

pub fn build(opts: &Options) -> Result<Built> {
    deps::ensure(opts.kernel_tree.is_none())?;
    let t = Instant::now();
    let src = kernel::source(opts.kernel_tree.as_deref(), &opts.cache)?;
    let kernel = kernel::ensure(&src, &fragments(&opts.workspace)?, &opts.cache, opts.jobs)?;
    let initrd = image::ensure(&opts.workspace, &opts.cache, &kernel)?;
    eprintln!(
        "[lab] kernel {} ({}), image {} ready in {}",
        kernel.release,
        kernel.dir.display(),
        initrd.display(),
        crate::progress::fmt_duration(t.elapsed())
    );
    Ok(Built { kernel, initrd })
}

/// Kernel config fragments, in name order: images/kernel/*.config.
pub fn fragments(workspace: &Path) -> Result<Vec<PathBuf>> {
    let dir = workspace.join("images/kernel");
    let mut v: Vec<PathBuf> = util::io_at(std::fs::read_dir(&dir), "read", &dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "config"))
        .collect();
    v.sort();
    if v.is_empty() {
        return Err(Error::new(format!(
            "no *.config fragment in {}",
            dir.display()
        )));
    }
    Ok(v)
}

pub fn run(opts: &Options, filters: &[String], harness_args: &[String]) -> Result<()> {
    // Malformed cases fail here, in seconds, before a kernel build or a VM.
    eprintln!("[lab] checking case files");
    if !harness(
        opts,
        &[],
        &["validate/".to_string()],
        &["--quiet".to_string()],
    )? {
        return Err(Error::new("invalid case files (above); no VM was started"));
    }
    let env = vm_env(opts)?;
    if harness(opts, &env, filters, harness_args)? {
        Ok(())
    } else {
        Err(Error::new(format!(
            "some cases failed; their artifacts are under {}",
            opts.artifacts.display()
        )))
    }
}

/// Build what VMs need, pick the accelerator, and describe it all in the
/// environment variables the harness reads.
pub fn vm_env(opts: &Options) -> Result<Vec<(&'static str, String)>> {
    let built = build(opts)?;
    let probe_log = opts.cache.join("kvm-probe.log");
    let (accel, why) = accel::detect(&built.kernel.bzimage, &probe_log);
    eprintln!("[lab] accelerator: {accel} ({why})");
    Ok(vec![
        (
            "PMEM_LAB_KERNEL",
            built.kernel.bzimage.display().to_string(),
        ),
        ("PMEM_LAB_INITRD", built.initrd.display().to_string()),
        (
            "PMEM_LAB_KERNEL_CONFIG",
            built.kernel.config.display().to_string(),
        ),
        ("PMEM_LAB_KERNEL_RELEASE", built.kernel.release.clone()),
        ("PMEM_LAB_ACCEL", accel.to_string()),
        ("PMEM_LAB_ARTIFACTS", opts.artifacts.display().to_string()),
        ("PMEM_LAB_CACHE", opts.cache.display().to_string()),
    ])
}

/// Run the harness with the lab's environment and return what it printed
/// (stdout and stderr), for the benchmark.
pub fn harness_output(opts: &Options, args: &[String]) -> Result<String> {
    let env = vm_env(opts)?;
    let out = harness_command(opts, &env)
        .args(args)
        .output()
        .map_err(|e| Error::new(format!("cannot run cargo: {e}")))?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// `cargo <args>` in the workspace with the lab's environment.
fn cargo(opts: &Options, env: &[(&str, String)], args: &[&str]) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(&opts.workspace)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)));
    cmd
}

/// The harness's `lab` test target, ready for its own arguments.
fn harness_command(opts: &Options, env: &[(&str, String)]) -> Command {
    cargo(
        opts,
        env,
        &[
            "test",
            "--quiet",
            "--package",
            "pmem-lab-harness",
            "--test",
            "lab",
            "--",
        ],
    )
}

/// `cargo xtask lab shell CASE`: an interactive shell in the case's VM.
pub fn shell(opts: &Options, case: &str) -> Result<()> {
    let env = vm_env(opts)?;
    let status = cargo(
        opts,
        &env,
        &[
            "run",
            "--quiet",
            "--package",
            "pmem-lab-harness",
            "--bin",
            "pmem-lab-shell",
            "--",
            case,
        ],
    )
    .status()
    .map_err(|e| Error::new(format!("cannot run cargo: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::new(format!("the shell session failed ({status})")))
    }
}

/// Run the harness's `lab` target: `cargo test -p pmem-lab-harness --test lab`.
/// `Ok(false)` when some trial failed.
fn harness(
    opts: &Options,
    env: &[(&str, String)],
    filters: &[String],
    extra: &[String],
) -> Result<bool> {
    let mut cmd = harness_command(opts, env);
    cmd.args(filters).args(extra);
    let status = cmd
        .status()
        .map_err(|e| Error::new(format!("cannot run cargo: {e}")))?;
    Ok(status.success())
}
