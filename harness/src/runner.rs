//! Run one case in a fresh VM: boot, set up namespaces, run the steps, keep
//! the evidence.
//!
//! Artifacts of a case go to `<artifacts>/<case id>/`: console.log,
//! agent.jsonl (every request and reply), qemu-cmdline.txt, steps.log and,
//! at the end, dmesg.txt. They are removed after a pass (unless
//! PMEM_LAB_KEEP=1) and kept after a failure, whose message names the folder.

use crate::case::{Action, Case, Step};
use crate::guest::Guest;
use crate::machine::{self, Accel, VmFiles};
use crate::setup::{self, Layout};
use crate::template;
use crate::vm::{self, Vm, VmError};
use pmem_lab_proto::{RunRequest, RunResult};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What the runner needs from the build: set by `cargo xtask lab` through
/// the environment (see [`LabEnv::from_env`]).
#[derive(Debug, Clone)]
pub struct LabEnv {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The kernel's .config, copied next to a failure's artifacts.
    pub kernel_config: Option<PathBuf>,
    pub accel: Accel,
    pub artifacts: PathBuf,
    pub keep_passed: bool,
}

impl LabEnv {
    pub const KERNEL: &'static str = "PMEM_LAB_KERNEL";
    pub const INITRD: &'static str = "PMEM_LAB_INITRD";

    /// `Ok(None)` when no kernel/initrd is configured: VM cases are then
    /// listed as ignored with the reason.
    pub fn from_env(default_artifacts: &Path) -> Result<Option<LabEnv>, String> {
        let (Some(kernel), Some(initrd)) = (
            std::env::var_os(Self::KERNEL),
            std::env::var_os(Self::INITRD),
        ) else {
            return Ok(None);
        };
        let (kernel, initrd) = (PathBuf::from(kernel), PathBuf::from(initrd));
        for (var, p) in [(Self::KERNEL, &kernel), (Self::INITRD, &initrd)] {
            if !p.is_file() {
                return Err(format!(
                    "{var}={} does not exist: run `cargo xtask lab` to build it",
                    p.display()
                ));
            }
        }
        let artifacts = std::env::var_os("PMEM_LAB_ARTIFACTS")
            .map(PathBuf::from)
            .unwrap_or_else(|| default_artifacts.to_path_buf());
        let accel = match std::env::var("PMEM_LAB_ACCEL").as_deref() {
            Ok("kvm") => Accel::Kvm,
            Ok("tcg") | Err(_) => Accel::Tcg,
            Ok(other) => return Err(format!("PMEM_LAB_ACCEL={other}: use kvm or tcg")),
        };
        let keep_passed = std::env::var("PMEM_LAB_KEEP").is_ok_and(|v| v == "1");
        Ok(Some(LabEnv {
            kernel,
            initrd,
            accel,
            artifacts,
            keep_passed,
            kernel_config: std::env::var_os("PMEM_LAB_KERNEL_CONFIG").map(PathBuf::from),
        }))
    }
}

/// Timings of a passed case.
#[derive(Debug, Clone)]
pub struct Passed {
    pub boot: Duration,
    pub total: Duration,
    pub kernel_release: String,
}

/// Run `case`; `Err` carries the full failure message.
pub fn run_case(case: &Case, env: &LabEnv) -> Result<Passed, String> {
    let dir = env.artifacts.join(&case.id);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let result = run_in(case, env, &dir);
    if result.is_ok() && !env.keep_passed {
        let _ = fs::remove_dir_all(&dir);
    } else if let Some(config) = &env.kernel_config {
        let _ = fs::copy(config, dir.join("kernel.config"));
    }
    result.map_err(|msg| format!("{msg}\nartifacts: {}", dir.display()))
}

fn run_in(case: &Case, env: &LabEnv, dir: &Path) -> Result<Passed, String> {
    let start = Instant::now();
    // Sockets need short paths; backing files are sparse and go with them.
    let private = tempfile::Builder::new()
        .prefix("pl-")
        .tempdir_in(
            std::env::var_os("PMEM_LAB_TMPDIR")
                .map(PathBuf::from)
                .unwrap_or_else(std::env::temp_dir),
        )
        .map_err(|e| format!("cannot create a private temp dir: {e}"))?;
    let files = VmFiles::in_dir(
        private.path(),
        &env.kernel,
        &env.initrd,
        case.machine.nvdimms.len(),
    );
    for (nv, path) in case.machine.nvdimms.iter().zip(&files.nvdimm_backing) {
        let f = fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
        f.set_len(nv.size.bytes())
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let args = machine::qemu_args(&case.machine, env.accel, &files);
    let _ = fs::write(dir.join("qemu-cmdline.txt"), vm::command_line(&args) + "\n");
    let vm = Vm::start(&args, &files.agent_socket, dir)?;
    let mut guest = Guest { vm };
    let mut log = StepLog::new(dir);

    let ready = guest
        .vm
        .wait_ready(case.boot_timeout)
        .map_err(|e| format!("boot: {e}"))?;
    log.line(format!(
        "agent ready after {:.2}s (guest uptime {:.2}s, kernel {})",
        ready.boot_time.as_secs_f64(),
        ready.guest_uptime.as_secs_f64(),
        ready.kernel_release
    ));
    let outcome = setup::create_namespaces(&mut guest, case)
        .map_err(|e| format!("setup: {e}"))
        .and_then(|layout| {
            log.line(format!("layout: {layout:?}"));
            case.steps
                .iter()
                .try_for_each(|step| run_step(&mut guest, case, step, &layout, &mut log))
        });
    save_dmesg(&mut guest, dir);
    guest.vm.kill();
    outcome?;
    Ok(Passed {
        boot: ready.boot_time,
        total: start.elapsed(),
        kernel_release: ready.kernel_release,
    })
}

fn run_step(
    guest: &mut Guest,
    case: &Case,
    step: &Step,
    layout: &Layout,
    log: &mut StepLog,
) -> Result<(), String> {
    let where_ = format!(
        "step {} `{}` ({}:{})",
        step.number,
        step.name,
        case.path.display(),
        step.line
    );
    let Action::Run { argv, stdin, env } = &step.action;
    let expand = |s: &str| template::expand(s, |ns, f| layout.lookup(ns, f));
    let req = RunRequest {
        argv: argv
            .iter()
            .map(|a| expand(a))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{where_}: {e}"))?,
        stdin: stdin
            .as_deref()
            .map(expand)
            .transpose()
            .map_err(|e| format!("{where_}: {e}"))?,
        env: env.clone(),
        timeout_ms: step.timeout.as_millis() as u64,
    };
    let result = guest
        .run(req.clone())
        .map_err(|e| format!("{where_}: {e}"))?;
    log.step(step, &req, &result);
    let problems = step.expect.check(&result);
    if problems.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{where_} failed:\n  - {}\n  argv: {:?}\n  {}\n{}{}",
        problems.join("\n  - "),
        req.argv,
        result.status_text(),
        show("stdout", &result.stdout),
        show("stderr", &result.stderr)
    ))
}

/// A captured stream for a failure message: trimmed, capped, indented.
fn show(label: &str, text: &str) -> String {
    const MAX: usize = 4000;
    if text.trim().is_empty() {
        return format!("  {label}: (empty)\n");
    }
    let mut t = text.trim_end().to_string();
    if t.len() > MAX {
        let cut = (0..=MAX)
            .rev()
            .find(|&i| t.is_char_boundary(i))
            .unwrap_or(0);
        t.truncate(cut);
        t.push_str("\n… (truncated; full text in agent.jsonl)");
    }
    format!("  {label}:\n    {}\n", t.replace('\n', "\n    "))
}

fn save_dmesg(guest: &mut Guest, dir: &Path) {
    let text = match guest.ok(&["dmesg"]) {
        Ok(r) => r.stdout,
        Err(e) => format!("(dmesg unavailable: {e})\n"),
    };
    let _ = fs::write(dir.join("dmesg.txt"), text);
}

/// steps.log: a readable account of what ran and what came back.
struct StepLog {
    text: String,
    path: PathBuf,
}

impl StepLog {
    fn new(dir: &Path) -> Self {
        StepLog {
            text: String::new(),
            path: dir.join("steps.log"),
        }
    }
    fn line(&mut self, l: String) {
        self.text.push_str(&l);
        self.text.push('\n');
        let _ = fs::write(&self.path, &self.text);
    }
    fn step(&mut self, step: &Step, req: &RunRequest, r: &RunResult) {
        let mut s = format!(
            "--- step {} `{}`: {:?} -> {}",
            step.number,
            step.name,
            req.argv,
            r.status_text()
        );
        let _ = write!(
            s,
            " in {} ms\n{}{}",
            r.duration_ms,
            show("stdout", &r.stdout),
            show("stderr", &r.stderr)
        );
        self.line(s);
    }
}

impl From<VmError> for String {
    fn from(e: VmError) -> String {
        e.to_string()
    }
}
