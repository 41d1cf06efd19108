//! Run one case in a fresh VM: boot, set up namespaces, run the steps, keep
//! the evidence.
//!
//! Artifacts of a case go to `<artifacts>/<case id>/`: console.log,
//! agent.jsonl (every request and reply), qemu-cmdline.txt, steps.log and,
//! at the end, dmesg.txt. They are removed after a pass (unless
//! PMEM_LAB_KEEP=1) and kept after a failure, whose message names the folder.

use crate::badblocks;
use crate::boot::{start_machine, Started};
use crate::bring;
use crate::case::step::{BadblocksCheck, Command, LineSpec, TouchSpec};
use crate::case::{Action, Case, NdctlOp, Step};
use crate::failure::{CaseFailed, Failure, StepAt};
use crate::guest::Guest;
use crate::inject;
use crate::lab_env::LabEnv;
use crate::oracle;
use crate::poison::watcher::{self, Consumption, KernelSymbols, Watcher};
use crate::poison::{Lines, Source};
use crate::setup::{self, Layout};
use crate::template;
use crate::vm::VmError;
use crate::vm_snapshot::{self, Start};
use crate::{bundle, checks, cxl, dax, machine, preflight};
use pmem_lab_proto::{RunRequest, RunResult};
use serde_json::json;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
    pub start: &'static str,
    /// The oracle's first observation, as the equivalence check compares
    /// it ([`oracle::Snapshot::equivalence_view`]).
    pub setup_view: serde_json::Value,
}

/// Run `case`; `Err` says why, and where the evidence is.
pub fn run_case(case: &Case, env: &LabEnv) -> Result<Passed, CaseFailed> {
    // The loader only makes ids of plain names; this folder is deleted and
    // recreated, so check again that it stays inside the artifacts root.
    if !Path::new(&case.id)
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)))
    {
        return Err(CaseFailed {
            failure: Box::new(Failure::Preflight(format!(
                "case id `{}` does not name a folder inside the artifacts root",
                case.id
            ))),
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
        .and_then(|()| run_in(case, env, &dir));
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

fn run_in(case: &Case, env: &LabEnv, dir: &Path) -> Result<Passed, Failure> {
    let start = Instant::now();
    if case.machine.nfit_test {
        preflight::nfit_test(env).map_err(Failure::Preflight)?;
    }
    if !case.machine.e820_pmem.is_empty() {
        preflight::e820(env).map_err(Failure::Preflight)?;
    }
    if let Some(why) = preflight::unsupported(case, env) {
        return Err(Failure::Preflight(why));
    }
    let (plan, key) = vm_snapshot::plan(case, env).map_err(Failure::Boot)?;
    let mut log = StepLog::new(dir);
    log.line(format!(
        "VM start: {} (snapshot key {})",
        plan.describe(),
        key.digest
    ));
    let start_kind = plan.kind();
    let (saved, mut maker) = match plan {
        Start::Cold(_) => (None, None),
        Start::ColdAndSave(m) => (None, Some(m)),
        Start::Restore(s) => (Some(s), None),
    };
    let mut started =
        start_machine(&case.machine, env, dir, false, saved.as_ref()).map_err(Failure::Boot)?;
    let ready = started.wait_ready(case.boot_timeout).map_err(|e| match &saved {
        // A snapshot that does not load would fail every case of its key:
        // drop it, so the next one boots and saves a good one.
        Some(s) => {
            s.discard();
            Failure::Restored {
                snapshot: s.dir.clone(),
                message: format!("{e}\n(the snapshot was removed: the next case of this machine and setup boots and saves a new one)"),
            }
        }
        None => Failure::Boot(e),
    })?;
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
    let acpi_tables = started.acpi.as_ref().map(|t| t.took);
    let Started {
        mut guest,
        private,
        files,
        ..
    } = started;
    let mut setup_view = serde_json::Value::Null;
    let outcome = match &saved {
        Some(s) => s.layout().map_err(|e| Failure::Restored {
            snapshot: s.dir.clone(),
            message: e,
        }),
        None => setup::create_namespaces(&mut guest, case).map_err(Failure::Setup),
    }
    .and_then(|layout| {
        if let Some(m) = &maker {
            save_snapshot(&mut guest, m, &layout, &files, private.path(), &mut log)
                .map_err(|e| Failure::Setup(format!("saving the VM snapshot: {e}")))?;
        }
        Ok(layout)
    })
    .and_then(|layout| {
            log.line(format!("layout: {layout:?}"));
            let poison = if case.machine.poison
                && (env.poison_default || !case.machine.poison_by_default)
            {
                let began = Instant::now();
                let w = start_poison(&mut guest, case, env, &layout, private.path())
                    .map_err(|e| Failure::Setup(format!("the poison model: {e}")))?;
                let armed = w
                    .sync()
                    .map_err(|e| Failure::Setup(format!("the poison model: {e}")))?;
                log.line(format!(
                    "poison model armed: {armed} lines, in {} ms",
                    began.elapsed().as_millis()
                ));
                Some(w)
            } else {
                None
            };
            let mut run = CaseRun {
                guest: &mut guest,
                case,
                layout,
                log: &mut log,
                last_seq: None,
                maps: Default::default(),
                reporter: env.reporter.clone(),
                dir,
                cache: &env.cache,
                poison,
                env,
                private: private.path(),
            };
            let baseline = run.baseline()?;
            setup_view = baseline.equivalence_view();
            match (maker.take(), &saved) {
                (Some(m), _) => {
                    let published = m.publish(&setup_view, &dir.join("console.log"));
                    run.log.line(match published {
                        Ok(s) => format!(
                            "VM snapshot published: {} ({} MB on disk)",
                            s.dir.display(),
                            s.disk_usage() >> 20
                        ),
                        Err(e) => format!("VM snapshot not published: {e}"),
                    });
                }
                (None, Some(s)) => {
                    let want = s.setup_state().map_err(|e| Failure::Restored {
                        snapshot: s.dir.clone(),
                        message: e,
                    })?;
                    if let Some(diff) = oracle::view_difference(&want, &setup_view) {
                        return Err(Failure::Restored {
                            snapshot: s.dir.clone(),
                            message: format!(
                                "the oracle's first observation differs from the cold boot that saved the snapshot:\n{diff}"
                            ),
                        });
                    }
                    run.log.line("restored guest: the oracle's first observation equals the cold boot's".into());
                }
                (None, None) => {}
            }
            run.steps()
        });
    save_dmesg(&mut guest, dir);
    let (_, platform_log) = watcher::paths(private.path());
    let _ = fs::copy(platform_log, dir.join("platform.log"));
    guest.kill();
    outcome?;
    Ok(Passed {
        boot: ready.boot_time,
        total: start.elapsed(),
        kernel_release: ready.kernel_release,
        acpi_tables,
        start: start_kind,
        setup_view,
    })
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
) -> Result<(), String> {
    let began = Instant::now();
    maker.save_layout(layout)?;
    let vm = guest.machine();
    let state = vm
        .save_state(&maker.state_path(), &private.join("migrate"), SAVE_TIMEOUT)
        .map_err(|e| e.to_string())?;
    let stream = began.elapsed();
    let backing = maker.save_backing(files)?;
    vm.resume(SAVE_TIMEOUT).map_err(|e| e.to_string())?;
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
    reporter: Option<std::sync::Arc<crate::report::Reporter>>,
    dir: &'a Path,
    /// The lab's cache (compiled programs a case brings live there).
    cache: &'a Path,
    /// The poison model, when the machine has it (or a `consume` step
    /// started it).
    poison: Option<Watcher>,
    env: &'a LabEnv,
    /// The VM's private directory (its gdbstub socket, the platform log).
    private: &'a Path,
}

/// Find the running kernel's direct map and arm the machine's latent errors.
fn start_poison(
    guest: &mut Guest,
    case: &Case,
    env: &LabEnv,
    layout: &Layout,
    private: &Path,
) -> Result<Watcher, String> {
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
    let (socket, log) = watcher::paths(private);
    Watcher::start(&socket, symbols, &log, lines, case.machine.cpus)
}

impl CaseRun<'_> {
    /// The oracle's first observation, which must break no invariant.
    fn baseline(&mut self) -> Result<oracle::Snapshot, Failure> {
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
        let case = self.case;
        let broke = Failure::broke(at);
        let mut problems = Vec::new();
        let mut details = String::new();
        // A namespace `clear-errors` said it cleared.
        let mut cleared: Option<String> = None;
        match &step.action {
            Action::Run(Command { argv, stdin, env })
            | Action::Sh(Command { argv, stdin, env }) => {
                let expand = |s: &str| template::expand(s, |r| self.layout.lookup(r));
                let req = RunRequest {
                    argv: argv
                        .iter()
                        .map(|a| expand(a))
                        .collect::<Result<_, _>>()
                        .map_err(|e| broke(e.to_string()))?,
                    stdin: stdin
                        .as_deref()
                        .map(expand)
                        .transpose()
                        .map_err(|e| broke(e.to_string()))?,
                    env: env
                        .iter()
                        .map(|(k, v)| expand(v).map(|v| (k.clone(), v)))
                        .collect::<Result<_, _>>()
                        .map_err(|e| broke(e.to_string()))?,
                    timeout_ms: step.timeout.as_millis() as u64,
                    tty: None,
                };
                if let Some(panic) = &step.panic {
                    return self.expect_panic(step, at, req, panic);
                }
                let result = self.command(step, &broke, req, &mut details)?;
                problems.extend(step.expect.check(&result));
            }
            Action::InjectError(op) | Action::Scrub(op) | Action::Clear(op) => {
                if let NdctlOp::Scrub { bus } = op {
                    let start = RunRequest {
                        argv: vec!["ndctl".into(), "start-scrub".into(), bus.clone()],
                        timeout_ms: step.timeout.as_millis() as u64,
                        ..Default::default()
                    };
                    let started = self.command(step, &broke, start, &mut details)?;
                    if started.exit_code != Some(0) {
                        problems.push(format!(
                            "`ndctl start-scrub {bus}` failed ({})",
                            started.status_text()
                        ));
                    }
                }
                let op = &self
                    .resolve_file_block(op)
                    .map_err(|e| broke(e.to_string()))?;
                let layout = &self.layout;
                let argv = op.argv(|ns| {
                    layout
                        .namespaces
                        .get(ns)
                        .map(|n| n.dev.clone())
                        .unwrap_or_default()
                });
                let req = RunRequest {
                    argv,
                    timeout_ms: step.timeout.as_millis() as u64,
                    ..Default::default()
                };
                let result = self.command(step, &broke, req, &mut details)?;
                problems.extend(step.expect.check(&result));
                if let (NdctlOp::Scrub { bus }, Some(0)) = (op, result.exit_code) {
                    problems.extend(checks::scrub_not_idle(bus, &result.stdout));
                }
                if let (NdctlOp::Clear { namespace, .. }, Some(0)) = (op, result.exit_code) {
                    cleared = Some(namespace.clone());
                }
            }
            Action::Inject(spec) => {
                let done = inject::inject(
                    self.guest,
                    &self.layout,
                    spec,
                    case.machine.cpus,
                    step.timeout,
                )
                .map_err(|e| broke(e.to_string()))?;
                self.log.line(format!(
                    "--- step {} `{}`: {}",
                    step.number,
                    step.name,
                    done.describe()
                ));
                if let Some(w) = &self.poison {
                    w.poison(vec![(done.resolved.gpa, crate::poison::LINE)])
                        .map_err(|e| broke(format!("the poison model: {e}")))?;
                }
            }
            Action::CxlInjectPoison(at) => {
                let path = format!("/machine/peripheral/{}", machine::cxl_device_id(at.device));
                let args = json!({"path": path, "start": at.dpa, "length": at.length});
                self.guest
                    .machine()
                    .qmp("cxl-inject-poison", Some(args), step.timeout)
                    .map_err(|e| broke(format!("QMP cxl-inject-poison: {e}")))?;
                // Where the poisoned lines sit in host physical memory, line
                // by line (an interleave spreads a DPA range).
                let lines: Vec<(u64, u64)> = (at.dpa..at.dpa + at.length)
                    .step_by(crate::poison::LINE as usize)
                    .filter_map(|dpa| self.layout.cxl.hpa(at.device, dpa))
                    .map(|(_, hpa)| (hpa, crate::poison::LINE))
                    .collect();
                self.log.line(format!(
                    "--- step {} `{}`: QMP cxl-inject-poison {path} DPA {:#x} length {:#x}; host physical {}",
                    step.number,
                    step.name,
                    at.dpa,
                    at.length,
                    match lines.first() {
                        Some((hpa, _)) => format!("{hpa:#x} ({} line(s))", lines.len()),
                        None => "none (no region maps it)".to_string(),
                    }
                ));
                // The poison model learns the lines from the device's list,
                // read after this step (see `observe`).
            }
            Action::ExpectCxlPoison(check) => {
                let memdev = self.layout.cxl.memdevs[check.device].clone();
                let got = cxl::poison_list(self.guest, &memdev).map_err(&broke)?;
                details.push_str(&format!(
                    "{memdev} poison list: {}\n",
                    got.iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("; ")
                ));
                problems.extend(cxl::check_list(check, &got, &self.layout.cxl));
            }
            Action::ExpectBadblocks(_) => {}
            Action::Map(spec) => {
                dax::map(self.guest, &self.layout, &mut self.maps, spec)
                    .map_err(|e| broke(e.to_string()))?;
            }
            Action::Unmap(name) => {
                dax::unmap(self.guest, &mut self.maps, name).map_err(|e| broke(e.to_string()))?;
            }
            Action::Touch(TouchSpec {
                map,
                offset,
                length,
                cpu,
            }) => {
                let (pages, faults) = self
                    .guest
                    .touch(map, *offset, *length, *cpu)
                    .map_err(|e| broke(e.to_string()))?;
                self.log.line(format!(
                    "--- step {} `{}`: {pages} pages, {faults} minor faults",
                    step.number, step.name
                ));
                if let Some(want) = step.faults.filter(|w| *w != faults) {
                    problems.push(format!(
                        "expected {want} minor faults, got {faults} (touching {pages} pages)"
                    ));
                }
            }
            Action::Consume(line) => {
                // `consume` is a load of poison: it needs the model even on
                // a machine that did not ask for it.
                if self.poison.is_none() {
                    let w = start_poison(self.guest, case, self.env, &self.layout, self.private)
                        .map_err(|e| broke(format!("the poison model: {e}")))?;
                    self.poison = Some(w);
                }
                let watcher = self.poison.as_ref().expect("started above");
                let done = dax::consume(
                    self.guest,
                    &self.layout,
                    &self.maps,
                    line,
                    watcher,
                    step.timeout,
                )
                .map_err(|e| broke(e.to_string()))?;
                self.log.line(format!(
                    "--- step {} `{}`: {}: {:?}",
                    step.number, step.name, done.note, done.signal
                ));
                let base = self.maps.get(&line.map).ok().map(|m| m.base);
                problems.extend(
                    step.signal
                        .as_ref()
                        .map(|e| e.check(done.signal.as_slice(), base))
                        .unwrap_or_default(),
                );
            }
            Action::Poison(LineSpec { map, offset, cpu }) => {
                let signal = self
                    .guest
                    .poison(map, *offset, *cpu)
                    .map_err(|e| broke(e.to_string()))?;
                self.log.line(format!(
                    "--- step {} `{}`: {signal:?}",
                    step.number, step.name
                ));
                let base = self.maps.get(map).ok().map(|m| m.base);
                problems.extend(
                    step.signal
                        .as_ref()
                        .map(|e| e.check(signal.as_slice(), base))
                        .unwrap_or_default(),
                );
            }
            Action::Signals(wait) => {
                let got = self
                    .guest
                    .signals(*wait)
                    .map_err(|e| broke(e.to_string()))?;
                self.log
                    .line(format!("--- step {} `{}`: {got:?}", step.number, step.name));
                let base = got
                    .first()
                    .and_then(|s| self.maps.containing(s.addr))
                    .map(|m| m.base);
                problems.extend(
                    step.signal
                        .as_ref()
                        .map(|e| e.check(&got, base))
                        .unwrap_or_default(),
                );
            }
            Action::Put(spec) => {
                let sent =
                    bring::put(self.guest, spec, self.cache, step.timeout).map_err(&broke)?;
                for (f, bytes) in &sent {
                    self.log.line(format!(
                        "--- step {} `{}`: {} ({bytes} bytes) -> {}",
                        step.number,
                        step.name,
                        f.host.display(),
                        f.guest
                    ));
                }
            }
            Action::Reconfigure(spec) => {
                let info = setup::reconfigure(
                    self.guest,
                    case,
                    &mut self.layout,
                    &spec.namespace,
                    spec.mode,
                    spec.align,
                )
                .map_err(&broke)?;
                self.log.line(format!(
                    "--- step {} `{}`: {info:?}; layout now {:?}",
                    step.number, step.name, self.layout.geometry
                ));
            }
            Action::MceKill(policy) => {
                self.guest
                    .mce_kill(policy.name())
                    .map_err(|e| broke(e.to_string()))?;
            }
        }
        if let Some(w) = &self.poison {
            let began = Instant::now();
            let armed = w
                .sync()
                .map_err(|e| broke(format!("the poison model: {e}")))?;
            let seen = w.take();
            let problem = self.machine_checks(step, &seen.consumptions);
            self.log.line(format!(
                "--- step {} `{}`: poison: {} machine checks, {} watched loads passed (other lines), {} deferred (the instruction faulted first), {armed} addresses watched, {} user mappings of NVDIMM memory seen (synced in {} ms)",
                step.number,
                step.name,
                seen.consumptions.len(),
                seen.passed,
                seen.deferred,
                seen.user_maps,
                began.elapsed().as_millis()
            ));
            problems.extend(problem);
        }
        let snap = self.observe(&format!("step {}", step.number))?;
        if let Action::ExpectBadblocks(BadblocksCheck {
            target,
            ranges,
            exact,
        }) = &step.action
        {
            let checked = checks::check_badblocks(&snap, &self.layout, target, ranges, *exact);
            self.log.line(format!(
                "--- step {} `{}`: {}",
                step.number,
                step.name,
                checked.as_ref().err().unwrap_or(&"as expected".to_string())
            ));
            problems.extend(checked.err());
        }
        if let Some(ns) = &cleared {
            problems.extend(checks::still_bad_after_clear(&snap, &self.layout, ns));
        }
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
            &case.allow_dmesg,
            &case.allow_oracle,
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

    /// An inject_error aimed at a file byte: find the block with FIEMAP. The
    /// extent's physical offset counts from the block device's first byte,
    /// which is the namespace's data start, the frame of ndctl's --block.
    fn resolve_file_block(&mut self, op: &NdctlOp) -> Result<NdctlOp, String> {
        let NdctlOp::InjectError {
            file: Some((path, offset)),
            ..
        } = op
        else {
            return Ok(op.clone());
        };
        let extents = self
            .guest
            .fiemap(path)
            .map_err(|e| format!("FIEMAP {path}: {e}"))?;
        let e = extents
            .iter()
            .find(|e| e.logical <= *offset && *offset < e.logical + e.length)
            .ok_or_else(|| {
                format!("byte {offset:#x} of {path} is not allocated (extents {extents:?})")
            })?;
        let block = (e.physical + (offset - e.logical)) / badblocks::SECTOR;
        self.log.line(format!(
            "--- {path} byte {offset:#x} is namespace data block {block} (extents {extents:?})"
        ));
        let mut resolved = op.clone();
        if let NdctlOp::InjectError { block: b, file, .. } = &mut resolved {
            *b = block;
            *file = None;
        }
        Ok(resolved)
    }

    /// Run a command in the guest, log it, and add it to the failure details.
    fn command(
        &mut self,
        step: &Step,
        broke: &impl Fn(String) -> Failure,
        req: RunRequest,
        details: &mut String,
    ) -> Result<RunResult, Failure> {
        let result = self
            .guest
            .run(req.clone())
            .map_err(|e| broke(e.to_string()))?;
        self.log.step(step, &req, &result);
        let _ = write!(
            details,
            "  argv: {:?}\n  {}\n{}{}",
            req.argv,
            result.status_text(),
            show("stdout", &result.stdout),
            show("stderr", &result.stderr)
        );
        Ok(result)
    }

    /// Log the step's machine checks; a problem if the step expected
    /// another count.
    fn machine_checks(&mut self, step: &Step, consumed: &[Consumption]) -> Option<String> {
        for c in consumed {
            self.log.line(format!(
                "--- step {} `{}`: machine check: {}",
                step.number,
                step.name,
                c.describe()
            ));
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

    /// A `run`/`sh` step that must panic the guest (the case's last): the
    /// panic text must match, and the machine checks the poison model
    /// raised on the way are counted as for any step. No snapshot after it:
    /// the VM is gone.
    fn expect_panic(
        &mut self,
        step: &Step,
        at: &StepAt,
        req: RunRequest,
        panic: &regex::Regex,
    ) -> Result<(), Failure> {
        let mut problems = Vec::new();
        let mut details = String::new();
        match self.guest.run(req.clone()) {
            Err(VmError::Panic { console }) => {
                self.log.line(format!(
                    "--- step {} `{}`: the guest panicked, as the step expects:\n{console}",
                    step.number, step.name
                ));
                if !panic.is_match(&console) {
                    problems.push(format!(
                        "the guest panicked, but no console line matches /{panic}/"
                    ));
                }
                details.push_str(&show("console", &console));
            }
            Ok(result) => {
                self.log.step(step, &req, &result);
                problems.push(format!(
                    "expected the guest kernel to panic, but the command ended ({})",
                    result.status_text()
                ));
            }
            Err(e) => return Err(Failure::broke(at)(e.to_string())),
        }
        if let Some(w) = &self.poison {
            let consumed = w.take().consumptions;
            problems.extend(self.machine_checks(step, &consumed));
        }
        if problems.is_empty() {
            return Ok(());
        }
        Err(Failure::StepFailed {
            at: at.clone(),
            problems,
            details,
        })
    }

    /// Snapshot the error state, append it to state.jsonl, advance the
    /// kernel-log cursor.
    fn observe(&mut self, label: &str) -> Result<oracle::Snapshot, Failure> {
        let snap = oracle::take(self.guest, &self.layout, self.last_seq).map_err(|e| {
            Failure::Observe {
                label: label.to_string(),
                message: e.to_string(),
            }
        })?;
        if let Some(last) = snap.kmsg.last() {
            self.last_seq = Some(last.seq);
        }
        // CXL poison is what the devices list: a clear through the kernel
        // (debugfs clear_poison) reaches the device and no other place the
        // lab could watch, so the model follows the lists.
        if let (Some(w), false) = (&self.poison, snap.cxl.is_empty()) {
            let lines = cxl::lines_of(&snap.cxl, &self.layout.cxl);
            w.cxl_lines(lines).map_err(|e| Failure::Observe {
                label: label.to_string(),
                message: format!("the poison model: {e}"),
            })?;
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
