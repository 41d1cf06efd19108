//! `cargo xtask lab`: host deps -> case validation -> kernel -> image ->
//! accelerator -> run the cases (the harness's `lab` test target).

use crate::util::{Error, Result};
use crate::{accel, deps, image, kernel, parity, Options};
use pmem_lab_env::events::CaseEvent;
use pmem_lab_env::put::PutArg;
use pmem_lab_env::qemu::Qemu;
use pmem_lab_env::vars;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Everything a VM run needs, built or reused.
pub struct Built {
    pub kernel: kernel::Kernel,
    pub initrd: PathBuf,
}

pub fn build(opts: &Options) -> Result<Built> {
    let t = Instant::now();
    let kernel = build_kernel(opts)?;
    let initrd = image::ensure(&opts.workspace, &opts.cache, &kernel)?;
    let built = Built { kernel, initrd };
    built.say_ready(t);
    Ok(built)
}

impl Built {
    fn say_ready(&self, since: Instant) {
        eprintln!(
            "[lab] kernel {} ({}), image {} ready in {}",
            self.kernel.release,
            self.kernel.dir.display(),
            self.initrd.display(),
            crate::progress::fmt_duration(since.elapsed())
        );
    }
}

/// Host packages, then the kernel (built or reused); for Debian's source,
/// the config's differences from Debian's own must be the ones
/// images/kernel/parity.txt explains (see [`crate::parity`]).
pub fn build_kernel(opts: &Options) -> Result<kernel::Kernel> {
    let spec = opts.kernel()?;
    deps::ensure(&opts.host(), &spec.debian().into_iter().collect::<Vec<_>>())?;
    let src = kernel::source(spec, &opts.cache)?;
    let built = kernel::ensure(&src, &fragments(&opts.workspace)?, &opts.cache, opts.jobs)?;
    // images/kernel/parity.txt audits the lab's config against Debian's
    // 6.12 config, the default kernel's.
    if spec.debian() != Some(deps::DebianKernel::V6_12) {
        eprintln!(
            "[lab] kernel config parity is audited for debian-6.12 only ({}); {} is not checked",
            parity::LIST,
            spec.label()
        );
        return Ok(built);
    }
    // Without the package registry (offline), say so and go on: the check
    // guards the recipe, not the run.
    let debian = match parity::debian_config(&opts.cache, deps::DebianKernel::V6_12.package()) {
        Ok(path) => path,
        Err(e) => {
            eprintln!(
                "[lab] kernel config parity not checked: Debian's config is not at hand ({e})"
            );
            return Ok(built);
        }
    };
    let config = fs_err::read_to_string(&built.config)?;
    let n = parity::check(&opts.workspace, &src.dir, &debian, &config)?;
    eprintln!(
        "[lab] kernel config: {n} differences from Debian's in the audited areas, each explained in {}",
        parity::LIST
    );
    Ok(built)
}

/// Kernel config fragments, in name order: images/kernel/*.config.
pub fn fragments(workspace: &Path) -> Result<Vec<PathBuf>> {
    let dir = workspace.join("images/kernel");
    let mut v: Vec<PathBuf> = fs_err::read_dir(&dir)?
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

/// The QEMU the run uses (see [`pmem_lab_env::qemu`]).
pub fn qemu(opts: &Options) -> Result<Qemu> {
    Qemu::find(opts.qemu.clone(), &opts.cache).map_err(|e| Error::new(e.to_string()))
}

pub fn run(opts: &Options, filter: Option<&str>, runner_args: &[String]) -> Result<()> {
    let args = checked_args(opts, filter, runner_args)?;
    if let [_] = &opts.kernels[..] {
        let env = vm_env(opts)?;
        return if harness(opts, &env, &args)? {
            Ok(())
        } else {
            Err(Error::new(format!(
                "some cases failed; their artifacts are under {}",
                opts.artifacts.display()
            )))
        };
    }
    run_kernels(opts, &args)
}

/// The test runner's arguments for a selection, once the case files are
/// valid and the selection is not empty.
pub fn checked_args(
    opts: &Options,
    filter: Option<&str>,
    runner_args: &[String],
) -> Result<Vec<String>> {
    // Malformed cases fail here, in seconds, before a kernel build or a VM;
    // so does a filter that selects nothing.
    // Both passes are remembered while nothing they read changed
    // (crate::validated).
    let runner = &crate::binaries::get(&opts.workspace)?.lab;
    let inputs = crate::validated::Inputs::now(&opts.workspace, runner, &opts.cache);
    let validate = ["validate/".to_string(), "--quiet".to_string()];
    if inputs.as_ref().and_then(|i| i.recall(&validate)).is_some() {
        eprintln!("[lab] case files unchanged since they last passed the check");
    } else {
        eprintln!("[lab] checking case files");
        if !harness(opts, &[], &validate)? {
            return Err(Error::new("invalid case files (above); no VM was started"));
        }
        if let Some(i) = &inputs {
            i.remember(&validate, "ok");
        }
    }
    let mut args: Vec<String> = filter.map(str::to_string).into_iter().collect();
    args.extend(runner_args.iter().cloned());
    if let Some(n) = opts.vms {
        args.push(format!("--test-threads={n}"));
    }
    // Only a filter or runner arguments can narrow the selection to nothing
    // (the validation pass already refused an empty cases root).
    let narrowed = filter.is_some() || !runner_args.is_empty();
    let running = !runner_args.iter().any(|a| a == "--list");
    if narrowed && running && selected_cases(opts, inputs.as_ref(), &args)? == 0 {
        return Err(Error::new(format!(
            "no case matches {}: `cargo xtask lab -- --list` lists them",
            filter.map_or("the selection".to_string(), |f| format!("`{f}`"))
        )));
    }
    Ok(args)
}

/// The selection on each kernel in turn (its artifacts and report in
/// folders of its own), then one report with a column per kernel.
fn run_kernels(opts: &Options, args: &[String]) -> Result<()> {
    let reports = pmem_lab_env::report_dir(&opts.artifacts);
    let mut columns = Vec::new();
    let mut failed = Vec::new();
    for k in &opts.kernels {
        let o = opts.for_kernel(k);
        eprintln!("[lab] === kernel {}", k.label());
        let dir = reports.join(k.label());
        let _ = std::fs::remove_dir_all(&dir);
        let mut env = vm_env(&o)?;
        let release = env
            .iter()
            .find(|(n, _)| *n == vars::KERNEL_RELEASE.name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        env.push((vars::REPORT.name, dir.display().to_string()));
        if !harness(&o, &env, args)? {
            failed.push(format!(
                "{} (artifacts: {})",
                k.label(),
                o.artifacts.display()
            ));
        }
        columns.push(crate::kernels::Column {
            label: k.label(),
            release,
            cases: case_events(&dir),
        });
    }
    let path = reports.join("kernels.md");
    std::fs::create_dir_all(&reports)?;
    std::fs::write(&path, crate::kernels::markdown(&columns))?;
    eprintln!("{}", crate::kernels::summary(&columns));
    eprintln!("[lab] report with a column per kernel: {}", path.display());
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::new(format!(
            "some cases failed on {}",
            failed.join(", ")
        )))
    }
}

/// Build what VMs need, pick the accelerator, and describe it all in the
/// environment variables the harness reads.
pub fn vm_env(opts: &Options) -> Result<Vec<(&'static str, String)>> {
    let t = Instant::now();
    let kernel = build_kernel(opts)?;
    let qemu = qemu(opts)?;
    // The accelerator probe (when its verdict is not remembered) boots the
    // kernel while the image is made.
    let probe = accel::Probe::start(&qemu, &kernel.bzimage, &opts.cache);
    let initrd = image::ensure(&opts.workspace, &opts.cache, &kernel)?;
    let built = Built { kernel, initrd };
    built.say_ready(t);
    let version = qemu_version(opts, &qemu)?;
    eprintln!("[lab] QEMU: {} ({version})", qemu.binary.display());
    let accel::Verdict { accel, why } = probe.verdict();
    eprintln!("[lab] accelerator: {accel} ({why})");
    let path = |p: &Path| p.display().to_string();
    Ok(vec![
        (vars::KERNEL.name, path(&built.kernel.bzimage)),
        (vars::INITRD.name, path(&built.initrd)),
        (vars::KERNEL_CONFIG.name, path(&built.kernel.config)),
        (vars::KERNEL_RELEASE.name, built.kernel.release.clone()),
        (vars::ACCEL.name, accel.to_string()),
        (vars::QEMU.name, path(&qemu.binary)),
        (vars::QEMU_VERSION.name, version),
        (vars::ARTIFACTS.name, path(&opts.artifacts)),
        (vars::CACHE.name, path(&opts.cache)),
        (
            vars::COLD.name,
            if opts.cold { "1" } else { "0" }.to_string(),
        ),
    ])
}

/// QEMU's `--version` line, remembered by the binary's identity and its
/// library and firmware folders (a QEMU start costs 0.05-0.15 s).
fn qemu_version(opts: &Options, qemu: &Qemu) -> Result<String> {
    let context = format!("{:?} {:?}", qemu.libraries, qemu.firmware);
    crate::memo::with(&opts.cache, |memo| {
        memo.get("qemu --version", &qemu.binary, &context, || {
            qemu.version_line()
                .map_err(|e| Error::new(format!("QEMU does not start: {e}")))
        })
    })
}

/// What a harness run reported: its exit status, the `case` events of its
/// events.jsonl (see harness/src/run/report.rs) and its output for messages.
pub struct HarnessRun {
    pub success: bool,
    pub cases: Vec<CaseEvent>,
    pub output: String,
}

/// Run the harness with the lab's environment and a report folder of its
/// own, and read the events it wrote: the benchmark's figures come from the
/// report, not from the human-readable lines.
pub fn harness_run(opts: &Options, args: &[String]) -> Result<HarnessRun> {
    harness_run_with(opts, args, Vec::new())
}

/// [`harness_run`] with more of the harness's environment (`extra`).
pub fn harness_run_with(
    opts: &Options,
    args: &[String],
    extra: Vec<(&'static str, String)>,
) -> Result<HarnessRun> {
    let mut env = vm_env(opts)?;
    env.extend(extra);
    harness_run_env(opts, env, args)
}

/// [`harness_run`] with an environment already built (see [`vm_env`]).
pub fn harness_run_env(
    opts: &Options,
    mut env: Vec<(&'static str, String)>,
    args: &[String],
) -> Result<HarnessRun> {
    let report = opts
        .cache
        .join(format!("bench-report-{}", std::process::id()));
    env.push((vars::REPORT.name, report.display().to_string()));
    let out = harness_command(opts, &env)?
        .args(args)
        .args(opts.vms.map(|n| format!("--test-threads={n}")))
        .output()
        .map_err(|e| Error::new(format!("cannot run the lab's test runner: {e}")))?;
    let cases = case_events(&report);
    let _ = std::fs::remove_dir_all(&report);
    Ok(HarnessRun {
        success: out.status.success(),
        cases,
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    })
}

/// The `case` events of a report folder's events.jsonl (see
/// harness/src/run/report.rs); none when the harness wrote no report.
pub fn case_events(report: &Path) -> Vec<CaseEvent> {
    pmem_lab_env::events::cases(&report.join("events.jsonl"))
}

/// The harness's `lab` test runner (built once: [`crate::binaries`]),
/// ready for its own arguments. It runs where `cargo test` would run it, in
/// its package's directory.
fn harness_command(opts: &Options, env: &[(&str, String)]) -> Result<Command> {
    Ok(in_harness(
        &crate::binaries::get(&opts.workspace)?.lab,
        opts,
        env,
    ))
}

/// One of the harness package's programs, run where cargo would run it
/// (its package's directory) with the lab's environment.
fn in_harness(program: &Path, opts: &Options, env: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(program);
    // The cache first, so that every run (the validation pass too, which
    // compiles the cases' C sources) uses `--cache`; `env` may repeat it.
    cmd.current_dir(opts.workspace.join("harness"))
        .env(vars::CACHE.name, &opts.cache)
        .envs(env.iter().map(|(k, v)| (k, v)));
    cmd
}

/// How many case trials (VM cases, not validation) the runner would run
/// with `args`: `--list` asks it without running anything (remembered with
/// the validation's inputs).
fn selected_cases(
    opts: &Options,
    inputs: Option<&crate::validated::Inputs>,
    args: &[String],
) -> Result<usize> {
    let mut list = args.to_vec();
    list.push("--list".to_string());
    if let Some(n) = inputs
        .and_then(|i| i.recall(&list))
        .and_then(|t| t.trim().parse().ok())
    {
        return Ok(n);
    }
    let out = harness_command(opts, &[])?
        .args(&list)
        .output()
        .map_err(|e| Error::new(format!("cannot run the lab's test runner: {e}")))?;
    if !out.status.success() {
        return Err(Error::new(format!(
            "the test runner cannot list the cases:\n{}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let n = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.ends_with(": test") && !l.starts_with("validate/"))
        .count();
    if let Some(i) = inputs {
        i.remember(&list, &n.to_string());
    }
    Ok(n)
}

/// `cargo xtask lab shell CASE`: an interactive shell in the case's VM. The
/// case is found and checked first, before anything is built.
pub fn shell(opts: &Options, case: &str, put: &[PutArg]) -> Result<()> {
    let put: Vec<String> = put.iter().map(PutArg::to_string).collect();
    let bins = crate::binaries::get(&opts.workspace)?;
    let shell = |env: &[(&str, String)], extra: &[&str]| {
        in_harness(&bins.shell, opts, env)
            .args(extra)
            .arg(case)
            .args(put.iter().flat_map(|p| ["--put", p.as_str()]))
            .status()
            .map_err(|e| Error::new(format!("cannot run pmem-lab-shell: {e}")))
    };
    if !shell(&[], &["--check"])?.success() {
        return Err(Error::new(format!(
            "no shell: case `{case}` (above); nothing was built"
        )));
    }
    let env = vm_env(opts)?;
    let status = shell(&env, &[])?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::new(format!("the shell session failed ({status})")))
    }
}

/// Run the harness's `lab` target, as `cargo test -p pmem-lab-harness --test lab` would.
/// `Ok(false)` when some trial failed.
pub fn harness(opts: &Options, env: &[(&str, String)], args: &[String]) -> Result<bool> {
    let status = harness_command(opts, env)?
        .args(args)
        .status()
        .map_err(|e| Error::new(format!("cannot run the lab's test runner: {e}")))?;
    Ok(status.success())
}
