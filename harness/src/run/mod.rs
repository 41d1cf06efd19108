//! Run one case in a fresh VM: boot, set up namespaces, run the steps, keep
//! the evidence.
//!
//! Artifacts of a case go to `<artifacts>/<case id>/`: console.log,
//! agent.jsonl (every request and reply), qemu-cmdline.txt, steps.log and,
//! at the end, dmesg.txt. They are removed after a pass (unless
//! PMEM_LAB_KEEP=1) and kept after a failure, whose message names the folder.

pub mod bundle;
pub mod failure;
pub mod preflight;
pub mod report;
pub mod shell;
mod steps;
pub mod verdict;

use crate::boot::vm_snapshot::{self, Start};
use crate::boot::{start_machine, BootError, Started};
use crate::case::{Case, Step};
use crate::guest::setup::{self, Layout};
use crate::guest::{cxl, dax};
use crate::guest::{Guest, GuestError};
use crate::observe::oracle;
use crate::run::failure::{CaseFailed, Failure, StepAt};
use crate::vm::lab_env::LabEnv;
use crate::vm::machine::{self, VmFiles};
use crate::vm::poison::watcher::{Consumption, KernelSymbols, Watcher};
use crate::vm::poison::{Lines, Source};
use pmem_lab_proto::{RunRequest, RunResult};
use report::Reporter;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use steps::Acted;

/// Timings of a passed case.
#[derive(Debug, Clone)]
pub struct Passed {
    /// QEMU start to agent ready (booted or restored).
    pub boot: Duration,
    pub total: Duration,
    pub kernel_release: String,
    /// Preparing the lab's ACPI tables before QEMU started, if used.
    pub acpi_tables: Option<Duration>,
    /// How the VM started ([`vm_snapshot::Start::kind`]).
    pub start: pmem_lab_env::events::Start,
    /// The oracle's first observation, as the equivalence check compares
    /// it ([`oracle::ErrorState::equivalence_view`]).
    pub setup_view: serde_json::Value,
}

/// Run `case`, its steps' events to `reporter`; `Err` says why, and where
/// the evidence is.
pub fn run_case(
    case: &Case,
    env: &LabEnv,
    reporter: Option<&Reporter>,
) -> Result<Passed, CaseFailed> {
    // The loader only makes ids of plain names; this folder is deleted and
    // recreated, so check again that it stays inside the artifacts root.
    if !Path::new(&case.id)
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)))
    {
        return Err(CaseFailed {
            failure: Box::new(Failure::Preflight(preflight::Unmet::Id(case.id.clone()))),
            artifacts: env.artifacts.clone(),
        });
    }
    let dir = env.artifacts.join(&case.id);
    let _ = fs::remove_dir_all(&dir);
    let result = fs::create_dir_all(&dir)
        .map_err(|source| Failure::Artifacts {
            path: dir.clone(),
            source,
        })
        .and_then(|()| run_in(case, env, reporter, &dir));
    if result.is_ok() && !env.keep_passed {
        let _ = fs::remove_dir_all(&dir);
    } else {
        bundle::write_bundle_extras(case, env, &dir);
    }
    result.map_err(|failure| CaseFailed {
        failure: Box::new(failure),
        artifacts: dir.clone(),
    })
}

fn run_in(
    case: &Case,
    env: &LabEnv,
    reporter: Option<&Reporter>,
    dir: &Path,
) -> Result<Passed, Failure> {
    let start = Instant::now();
    preflight_case(case, env)?;
    let mut log = StepLog::new(dir);
    let Booted {
        started,
        ready,
        saved,
        mut maker,
        kind,
    } = boot(case, env, dir, &mut log)?;
    let acpi_tables = started.acpi.as_ref().map(|t| t.took);
    let Started {
        mut guest,
        private,
        files,
        ..
    } = started;
    let mut setup_view = serde_json::Value::Null;
    let outcome = match &saved {
        Some(s) => s.layout().map_err(|source| Failure::Restored {
            snapshot: s.dir.clone(),
            source: Box::new(source),
            removed: false,
        }),
        None => setup::create_namespaces(&mut guest, case).map_err(Failure::setup),
    }
    .and_then(|layout| {
        if let Some(m) = &maker {
            save_snapshot(&mut guest, m, &layout, &files, private.path(), &mut log)
                .map_err(|e| Failure::setup(e.context("saving the VM snapshot")))?;
        }
        Ok(layout)
    })
    .and_then(|layout| {
        log.line(format!("layout: {layout:?}"));
        let poison = arm_poison(&mut guest, case, env, &layout, &files, &mut log)?;
        let mut run = CaseRun {
            guest: &mut guest,
            case,
            layout,
            log: &mut log,
            last_seq: None,
            maps: Default::default(),
            reporter,
            dir,
            cache: &env.cache,
            poison,
            env,
            files: &files,
        };
        let baseline = run.baseline()?;
        setup_view = baseline.equivalence_view();
        publish_or_compare(maker.take(), saved.as_ref(), &setup_view, dir, run.log)?;
        run.steps()
    });
    // A panic on the way is the failure, whatever the lab was doing.
    let outcome = outcome.map_err(|f| f.or_panic(guest.vm().panicked()));
    save_dmesg(&mut guest, dir);
    let _ = fs::copy(&files.platform_log, dir.join("platform.log"));
    guest.kill();
    outcome?;
    Ok(Passed {
        boot: ready.boot_time,
        total: start.elapsed(),
        kernel_release: ready.kernel_release,
        acpi_tables,
        start: kind,
        setup_view,
    })
}

/// What the case needs of the kernel and the lab, checked before a VM.
fn preflight_case(case: &Case, env: &LabEnv) -> Result<(), Failure> {
    if case.machine.nfit_test {
        preflight::nfit_test(env).map_err(Failure::Preflight)?;
    }
    if !case.machine.e820_pmem.is_empty() {
        preflight::e820(env).map_err(Failure::Preflight)?;
    }
    match preflight::unsupported(case, env) {
        Some(why) => Err(Failure::Preflight(why)),
        None => Ok(()),
    }
}

/// A case's VM, up to its agent's answer.
struct Booted {
    started: Started,
    ready: crate::vm::Ready,
    /// The snapshot it was restored from.
    saved: Option<vm_snapshot::Saved>,
    /// The snapshot it saves after setup.
    maker: Option<vm_snapshot::Maker>,
    kind: pmem_lab_env::events::Start,
}

/// Start the case's VM as the snapshot plan says (boot, boot and save, or
/// restore) and wait for the agent.
fn boot(case: &Case, env: &LabEnv, dir: &Path, log: &mut StepLog) -> Result<Booted, Failure> {
    let (plan, key) = vm_snapshot::plan(case, env).map_err(Failure::boot)?;
    log.line(format!(
        "VM start: {} (snapshot key {})",
        plan.describe(),
        key.digest
    ));
    let kind = plan.kind();
    let (saved, maker) = match plan {
        Start::Cold(_) => (None, None),
        Start::ColdAndSave(m) => (None, Some(m)),
        Start::Restore(s) => (Some(s), None),
    };
    let mut started =
        start_machine(&case.machine, env, dir, false, saved.as_ref()).map_err(Failure::boot)?;
    let ready = started
        .wait_ready(case.boot_timeout)
        .map_err(|e| match &saved {
            // A snapshot that does not load would fail every case of its key:
            // drop it, so the next one boots and saves a good one.
            Some(s) => {
                s.discard();
                Failure::Restored {
                    snapshot: s.dir.clone(),
                    source: Box::new(e),
                    removed: true,
                }
            }
            None => Failure::boot(e),
        });
    let ready = ready.map_err(|f| f.or_panic(started.guest.vm().panicked()))?;
    log.line(format!(
        "agent ready after {:.2}s (guest uptime {:.2}s, kernel {}{})",
        ready.boot_time.as_secs_f64(),
        ready.guest_uptime.as_secs_f64(),
        ready.kernel_release,
        if ready.phases.is_empty() {
            String::new()
        } else {
            format!("; {}", ready.phases)
        }
    ));
    Ok(Booted {
        started,
        ready,
        saved,
        maker,
        kind,
    })
}

/// The poison model, when the case has it on.
fn arm_poison(
    guest: &mut Guest,
    case: &Case,
    env: &LabEnv,
    layout: &Layout,
    files: &VmFiles,
    log: &mut StepLog,
) -> Result<Option<Watcher>, Failure> {
    if !(case.machine.poison && (env.poison_default || !case.machine.poison_by_default)) {
        return Ok(None);
    }
    let began = Instant::now();
    let w = start_poison(guest, case, env, layout, files).map_err(Failure::setup)?;
    let armed = w.sync().map_err(|e| Failure::setup(GuestError::from(e)))?;
    log.line(format!(
        "poison model armed: {armed} lines, in {} ms",
        began.elapsed().as_millis()
    ));
    Ok(Some(w))
}

/// After the first observation: publish the snapshot this case saved, or
/// check that a restored guest looks as the cold boot that saved it did.
fn publish_or_compare(
    maker: Option<vm_snapshot::Maker>,
    saved: Option<&vm_snapshot::Saved>,
    setup_view: &serde_json::Value,
    dir: &Path,
    log: &mut StepLog,
) -> Result<(), Failure> {
    match (maker, saved) {
        (Some(m), _) => {
            let published = m.publish(setup_view, &dir.join("console.log"));
            log.line(match published {
                Ok(s) => format!(
                    "VM snapshot published: {} ({} MB on disk)",
                    s.dir.display(),
                    s.disk_usage() >> 20
                ),
                Err(e) => format!("VM snapshot not published: {e}"),
            });
        }
        (None, Some(s)) => {
            let want = s.setup_state().map_err(|source| Failure::Restored {
                snapshot: s.dir.clone(),
                source: Box::new(source),
                removed: false,
            })?;
            if let Some(diff) = oracle::view_difference(&want, setup_view) {
                return Err(Failure::Restored {
                    snapshot: s.dir.clone(),
                    source: Box::new(BootError::Snapshot {
                        path: s.dir.clone(),
                        why: format!(
                            "the oracle's first observation differs from the cold boot that saved the snapshot:\n{diff}"
                        ),
                    }),
                    removed: false,
                });
            }
            log.line(
                "restored guest: the oracle's first observation equals the cold boot's".into(),
            );
        }
        (None, None) => {}
    }
    Ok(())
}

/// Save the VM as setup left it: stop it, write its state, copy the
/// backing files, run it again.
fn save_snapshot(
    guest: &mut Guest,
    maker: &vm_snapshot::Maker,
    layout: &Layout,
    files: &machine::VmFiles,
    private: &Path,
    log: &mut StepLog,
) -> Result<(), BootError> {
    let began = Instant::now();
    maker.save_layout(layout)?;
    let vm = guest.vm();
    let state = vm.save_state(&maker.state_path(), &private.join("migrate"), SAVE_TIMEOUT)?;
    let stream = began.elapsed();
    let backing = maker.save_backing(files)?;
    vm.resume(SAVE_TIMEOUT)?;
    log.line(format!(
        "VM snapshot saved in {:.2}s (state {:.1} MB in {:.2}s, backing files {} KB of data)",
        began.elapsed().as_secs_f64(),
        state as f64 / 1e6,
        stream.as_secs_f64(),
        backing >> 10
    ));
    Ok(())
}

/// Saving a snapshot: a stopped guest of a few GB under TCG.
const SAVE_TIMEOUT: Duration = Duration::from_secs(120);

/// One case's steps, with what the oracle needs between them.
struct CaseRun<'a> {
    guest: &'a mut Guest,
    case: &'a Case,
    layout: Layout,
    log: &'a mut StepLog,
    /// Last kernel log record already looked at.
    last_seq: Option<u64>,
    /// Named device-dax mappings in the agent.
    maps: dax::Maps,
    reporter: Option<&'a Reporter>,
    dir: &'a Path,
    /// The lab's cache (compiled programs a case brings live there).
    cache: &'a Path,
    /// The poison model, when the machine has it (or a `consume` step
    /// started it).
    poison: Option<Watcher>,
    env: &'a LabEnv,
    /// The VM's files (its gdbstub socket, the platform log).
    files: &'a VmFiles,
}

/// Find the running kernel's direct map and arm the machine's latent errors.
fn start_poison(
    guest: &mut Guest,
    case: &Case,
    env: &LabEnv,
    layout: &Layout,
    files: &VmFiles,
) -> Result<Watcher, GuestError> {
    // A kernel built without CONFIG_RANDOMIZE_BASE runs where System.map
    // says (the lab's own config); otherwise the guest says where `_text`
    // is (and so does an unreadable config).
    let relocatable = env.kernel_config.as_ref().is_none_or(|c| {
        preflight::unbuilt(c, &["CONFIG_RANDOMIZE_BASE"]).map_or(true, |u| u.is_empty())
    });
    let kallsyms = if relocatable {
        Some(guest.ok(&KernelSymbols::kallsyms_command())?.stdout)
    } else {
        None
    };
    let symbols = KernelSymbols::new(
        &env.kernel.with_file_name("System.map"),
        kallsyms.as_deref(),
    )?;
    let mut lines = Lines::default();
    for (nv, region) in case.machine.nvdimms.iter().zip(&layout.geometry.regions) {
        for e in &nv.errors {
            lines.add_range(region.start + e.offset, e.length, Source::Latent);
        }
    }
    Ok(Watcher::start(
        &files.gdb_socket,
        symbols,
        &files.platform_log,
        lines,
        case.machine.cpus,
    )?)
}

impl CaseRun<'_> {
    /// The oracle's first observation, which must break no invariant.
    fn baseline(&mut self) -> Result<oracle::ErrorState, Failure> {
        let baseline = self.observe("setup")?;
        let broken = oracle::violations(
            &self.layout.geometry,
            &baseline,
            &self.case.allow_dmesg,
            &self.case.allow_oracle,
        );
        if !broken.is_empty() {
            return Err(Failure::Baseline(broken));
        }
        Ok(baseline)
    }

    fn steps(&mut self) -> Result<(), Failure> {
        for step in &self.case.steps {
            self.step(step)?;
        }
        Ok(())
    }

    fn step(&mut self, step: &Step) -> Result<(), Failure> {
        for round in 1..=step.repeat {
            let at = StepAt {
                number: step.number,
                name: step.name.clone(),
                round: (step.repeat > 1).then_some((round, step.repeat)),
                file: self.case.path.clone(),
                line: step.line,
            };
            let began = Instant::now();
            let result = self.step_once(step, &at);
            if let Some(r) = &self.reporter {
                let name = match at.round {
                    Some((round, of)) => format!("{} (round {round} of {of})", step.name),
                    None => step.name.clone(),
                };
                let message = result.as_ref().err().map(|e| e.to_string());
                r.step(
                    &self.case.id,
                    step.number,
                    &name,
                    began.elapsed(),
                    message.as_deref(),
                );
            }
            result?;
        }
        Ok(())
    }

    fn step_once(&mut self, step: &Step, at: &StepAt) -> Result<(), Failure> {
        if let Some(panic) = &step.panic {
            return self.expect_panic(step, at, panic);
        }
        let acted = self.act(step, at)?;
        self.after(step, at, acted)
    }

    /// What every step does after its action: the poison model's count of
    /// machine checks, the oracle's error state and the checks the action
    /// asked of it, the kernel log, the oracle's rules, and the verdict.
    fn after(&mut self, step: &Step, at: &StepAt, acted: Acted) -> Result<(), Failure> {
        let broke = Failure::broke(at);
        let Acted {
            mut problems,
            mut details,
            on_state,
        } = acted;
        if let Some(w) = &self.poison {
            let began = Instant::now();
            let armed = w.sync().map_err(|e| broke(e.into()))?;
            let seen = w.take();
            let problem = self.machine_checks(step, &seen.consumptions);
            self.note(step, format!(
                "poison: {} machine checks, {} watched loads passed (other lines), {} deferred (the instruction faulted first), {armed} addresses watched, {} user mappings of NVDIMM memory seen (synced in {} ms)",
                seen.consumptions.len(),
                seen.passed,
                seen.deferred,
                seen.user_maps,
                began.elapsed().as_millis()
            ));
            problems.extend(problem);
        }
        let snap = self.observe(&format!("step {}", step.number))?;
        problems.extend(self.on_state(step, &snap, &on_state));
        let dmesg: Vec<&str> = snap.kmsg.iter().map(|r| r.text.as_str()).collect();
        for re in &step.dmesg {
            if !dmesg.iter().any(|l| re.is_match(l)) {
                problems.push(format!("no kernel log line during the step matches /{re}/"));
            }
        }
        for re in &step.dmesg_not {
            if let Some(l) = dmesg.iter().find(|l| re.is_match(l)) {
                problems.push(format!("the kernel logged {l:?}, which matches /{re}/"));
            }
        }
        let broken = oracle::violations(
            &self.layout.geometry,
            &snap,
            &self.case.allow_dmesg,
            &self.case.allow_oracle,
        );
        let kernel_trouble = broken
            .iter()
            .any(|v| matches!(v, oracle::Violation::KernelLog(_)));
        problems.extend(broken.iter().map(|v| format!("oracle: {v}")));
        if problems.is_empty() {
            return Ok(());
        }
        if !(step.dmesg.is_empty() && step.dmesg_not.is_empty()) || kernel_trouble {
            let lines: Vec<String> = snap.kmsg.iter().map(|r| r.render()).collect();
            details.push_str(&show("kernel log during the step", &lines.join("\n")));
        }
        Err(Failure::StepFailed {
            at: at.clone(),
            problems,
            details,
        })
    }

    /// A line of steps.log about `step` (its executors' too).
    fn note(&mut self, step: &Step, text: impl std::fmt::Display) {
        self.log
            .line(format!("--- step {} `{}`: {text}", step.number, step.name));
    }

    /// Log the step's machine checks; a problem if the step expected
    /// another count.
    fn machine_checks(&mut self, step: &Step, consumed: &[Consumption]) -> Option<String> {
        for c in consumed {
            self.note(step, format!("machine check: {}", c.describe()));
        }
        let want = step
            .machine_checks
            .filter(|w| *w as usize != consumed.len())?;
        Some(format!(
            "expected {want} machine checks from loads of poison, the lab raised {}{}",
            consumed.len(),
            consumed
                .iter()
                .map(|c| format!("\n  {}", c.describe()))
                .collect::<String>()
        ))
    }

    /// Snapshot the error state, append it to state.jsonl, advance the
    /// kernel-log cursor.
    fn observe(&mut self, label: &str) -> Result<oracle::ErrorState, Failure> {
        let observe = |source| Failure::Observe {
            label: label.to_string(),
            source: Box::new(source),
        };
        let snap = oracle::take(self.guest, &self.layout, self.last_seq).map_err(observe)?;
        if let Some(last) = snap.kmsg.last() {
            self.last_seq = Some(last.seq);
        }
        // CXL poison is what the devices list: a clear through the kernel
        // (debugfs clear_poison) reaches the device and no other place the
        // lab could watch, so the model follows the lists.
        if let (Some(w), false) = (&self.poison, snap.cxl.is_empty()) {
            let lines = cxl::lines_of(&snap.cxl, &self.layout.cxl);
            w.cxl_lines(lines).map_err(|e| observe(e.into()))?;
        }
        let mut line = snap.to_json(label).to_string();
        line.push('\n');
        let path = self.dir.join("state.jsonl");
        let _ = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
        Ok(snap)
    }
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
