//! The lab's test runner: one libtest-mimic trial per case file.
//!
//! `validate/<case>` trials parse and check every case file and always run.
//! `<case>` trials boot a VM; they need the kernel and initramfs that
//! `cargo xtask lab` builds and passes in PMEM_LAB_KERNEL / PMEM_LAB_INITRD.
//! Without them (plain `cargo test`) the VM trials are listed as ignored
//! with the reason. If any case file is invalid, no VM starts at all.

use libtest_mimic::{Arguments, Completion, Failed, Trial};
use pmem_lab_harness::boot::vm_snapshot;
use pmem_lab_harness::case::{self, Case};
use pmem_lab_harness::guest::bring;
use pmem_lab_harness::known::{self, KnownFailure};
use pmem_lab_harness::run;
use pmem_lab_harness::run::report::{self, CaseRecord, Outcome, Reporter, RunInfo};
use pmem_lab_harness::run::verdict::{self, Verdict};
use pmem_lab_harness::vm::lab_env::{EnvError, LabEnv};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    let mut args = Arguments::from_args();
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = pmem_lab_env::vars::CASES
        .get()
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../cases"));
    // Absolute paths in messages: clickable, and right whatever the cwd.
    let root = root.canonicalize().unwrap_or(root);
    let loaded = case::load_dir(&root).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2);
    });
    let ids: Vec<&str> = loaded.iter().map(|l| l.id.as_str()).collect();
    let (known_path, known) = known_failures(manifest, &root, &ids);
    let invalid = loaded.iter().filter(|l| l.case.is_err()).count() + usize::from(known.is_err());
    let default_artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pmem-lab-artifacts");
    let lab = LabEnv::from_env(&default_artifacts);
    let skip_reason = skip_reason(&lab, invalid);
    let known_problems = known.as_ref().err().cloned();
    let known = Arc::new(known.unwrap_or_default());
    let lab = lab.ok().flatten().map(|mut env| {
        env.cases_root = Some(root.clone());
        Arc::new(env)
    });
    // Reports only when VMs run: a validation pass has nothing to say.
    let reporter = lab.as_deref().and_then(reporter);
    // VMs at a time: `--test-threads` (xtask's `--vms`), else the lab's
    // measured default rather than libtest's one per core.
    if lab.is_some() && args.test_threads.is_none() {
        args.test_threads = Some(pmem_lab_env::parallel::default_vms());
    }
    let mut trials = validation_trials(&known_path, known_problems, &loaded);
    let cold_views = Arc::new(cold_views());
    for case in in_snapshot_order(&loaded, lab.as_deref(), &args) {
        trials.push(match (&skip_reason, &lab) {
            (None, Some(lab)) => vm_trial(
                case.clone(),
                Arc::clone(lab),
                reporter.clone(),
                known.clone(),
                Arc::clone(&cold_views),
            ),
            // Ignored like #[ignore]: `-- --ignored` runs them, and then
            // they fail with the reason instead of pretending to pass.
            (reason, _) => {
                let reason = reason.clone().unwrap_or_default();
                Trial::test(case.id.clone(), move || Err(reason.into()))
                    .with_ignored_flag(true)
                    .with_kind("vm")
            }
        });
    }
    if let (Some(lab), None) = (&lab, &skip_reason) {
        trials.extend(self_tests(lab, &reporter));
    }
    // Say once why VM cases do not run, if any of them was selected.
    let vm_selected = trials
        .iter()
        .any(|t| t.kind() == "vm" && t.has_ignored_flag() && !args.is_filtered_out(t));
    if let (Some(reason), true) = (&skip_reason, vm_selected) {
        eprintln!("pmem-lab: VM cases are ignored: {reason}");
    }
    let conclusion = libtest_mimic::run(&args, trials);
    finish(&conclusion, reporter.as_deref(), lab.is_some());
    conclusion.exit();
}

/// Why no VM case runs, if none does.
fn skip_reason(lab: &Result<Option<LabEnv>, EnvError>, invalid: usize) -> Option<String> {
    match (lab, invalid) {
        (_, n) if n > 0 => Some(format!("not started: {n} case file(s) are invalid (see validate/ trials)")),
        (Err(e), _) => Some(e.to_string()),
        (Ok(None), _) => Some(
            "needs the lab's kernel and initramfs: run `cargo xtask lab` (sets PMEM_LAB_KERNEL and PMEM_LAB_INITRD)"
                .to_string(),
        ),
        (Ok(Some(_)), _) => None,
    }
}

/// The run's report, beside the artifacts (or PMEM_LAB_REPORT). Under
/// cargo-nextest every trial is its own process: nextest writes the JUnit
/// report (.config/nextest.toml), ours would be overwritten.
fn reporter(env: &LabEnv) -> Option<Arc<Reporter>> {
    if std::env::var_os("NEXTEST").is_some() {
        return None;
    }
    let dir = pmem_lab_env::report_dir(&env.artifacts);
    let run = RunInfo {
        kernel: pmem_lab_env::vars::KERNEL_RELEASE
            .get_str()
            .unwrap_or_default(),
        qemu: env.qemu_version.clone(),
        accel: env.accel.name().to_string(),
    };
    Reporter::create(&dir, run)
        .map_err(|e| eprintln!("pmem-lab: no report: {e}"))
        .ok()
        .map(Arc::new)
}

/// The cold run's first observations (`--equivalence`), by case id.
fn cold_views() -> Option<HashMap<String, serde_json::Value>> {
    pmem_lab_env::vars::EQUIVALENCE.get().map(|p| {
        report::setup_views(Path::new(&p)).unwrap_or_else(|e| {
            eprintln!("error: PMEM_LAB_EQUIVALENCE: {e}");
            std::process::exit(2);
        })
    })
}

/// `validate/` trials: the known-failure list, and each case file (with
/// the C sources it brings compiled, before any VM boots).
fn validation_trials(
    known_path: &Path,
    known_problems: Option<String>,
    loaded: &[case::load::Loaded],
) -> Vec<Trial> {
    let mut trials = vec![Trial::test(
        format!(
            "validate/{}",
            known_path.file_name().unwrap_or_default().to_string_lossy()
        ),
        move || known_problems.map_or(Ok(()), |p| Err(Failed::from(p))),
    )
    .with_kind("validate")];
    let compiler = pmem_lab_harness::guest::compile::available();
    for l in loaded {
        let errors = l.case.as_ref().err().cloned();
        let case = l.case.as_ref().ok().cloned();
        let cache = pmem_lab_env::default_cache();
        trials.push(
            Trial::test(format!("validate/{}", l.id), move || {
                match (&errors, &case) {
                    (Some(errs), _) => Err(Failed::from(
                        errs.iter()
                            .map(|e| e.to_string())
                            .collect::<Vec<_>>()
                            .join("\n\n"),
                    )),
                    // Without gcc on this machine the VM trial reports it.
                    (None, Some(case)) if compiler => bring::compile_case(case, &cache)
                        .map_err(|errs| Failed::from(errs.join("\n\n"))),
                    _ => Ok(()),
                }
            })
            .with_kind("validate"),
        );
    }
    trials
}

/// The cases, the first of each VM snapshot key first: the others restore
/// its snapshot, and would otherwise wait for it (see vm_snapshot::plan).
fn in_snapshot_order<'a>(
    loaded: &'a [case::load::Loaded],
    lab: Option<&LabEnv>,
    args: &Arguments,
) -> Vec<&'a Case> {
    let mut seen = std::collections::HashSet::new();
    let (firsts, rest): (Vec<&Case>, Vec<&Case>) = loaded
        .iter()
        .filter_map(|l| l.case.as_ref().ok())
        .partition(|case| match lab {
            Some(env)
                if env.snapshots
                    && !args.is_filtered_out(&Trial::test(case.id.clone(), || Ok(()))) =>
            {
                seen.insert(vm_snapshot::key(case, env).digest)
            }
            _ => true,
        });
    firsts.into_iter().chain(rest).collect()
}

/// The report's end, and the summary line. A run without the lab's kernel
/// (plain `cargo test`, xtask's validation pass) says so: CI counts only
/// the summaries of runs that boot VMs.
fn finish(conclusion: &libtest_mimic::Conclusion, reporter: Option<&Reporter>, vms: bool) {
    if let Some(r) = reporter {
        match r.finish() {
            Ok(path) => eprintln!(
                "pmem-lab: JUnit report {}, events {}",
                path.display(),
                path.with_file_name("events.jsonl").display()
            ),
            Err(e) => eprintln!("pmem-lab: cannot write the JUnit report: {e}"),
        }
    }
    let scope = if vms { "" } else { " (case files only, no VM)" };
    eprintln!(
        "pmem-lab{scope}: {} passed, {} failed, {} ignored, {} filtered out",
        conclusion.num_passed,
        conclusion.num_failed,
        conclusion.num_ignored,
        conclusion.num_filtered_out
    );
}

/// The lab checking itself: cases that must fail, and fail the right way.
/// A lab that cannot see a panic or a dead QEMU would pass broken kernels.
struct SelfTest {
    id: &'static str,
    yaml: &'static str,
    /// The failure message must contain all of these.
    must_say: &'static [&'static str],
    /// ...and come well before the step timeout (60 s): seen, not timed out.
    within: Duration,
}

const SELF_TESTS: &[SelfTest] = &[
    SelfTest {
        id: "selftest/panic-fails-the-case-at-once",
        // Killing the agent makes init exit, and the kernel panics.
        yaml: "steps:\n  - sh: kill -9 $PPID; sleep 50\n",
        must_say: &["guest kernel panicked or oopsed", "Kernel panic - not syncing: Attempted to kill init", "step 1"],
        within: Duration::from_secs(20),
    },
    SelfTest {
        id: "selftest/qemu-exit-fails-the-case",
        yaml: "steps:\n  - run: [poweroff, -f]\n",
        must_say: &["QEMU exited (exit status 0)", "step 1"],
        within: Duration::from_secs(20),
    },
    SelfTest {
        // A firmware bug in the ARS status layout must fail the case through
        // the oracle's kernel-log rule, with the kernel's own words.
        id: "selftest/malformed-ars-status-fails-the-case",
        yaml: "machine:\n  root_dsm_faults: [truncated-ars-status]\n  nvdimms:\n    - size: 1G\n      errors: [{offset: 64M}, {offset: 65M}]\nsteps:\n  - run: [true]\n",
        must_say: &["kernel log:", "nfit ACPI0012:00: detected truncated ars results"],
        within: Duration::from_secs(40),
    },
    SelfTest {
        id: "selftest/failed-expectation-names-step-and-values",
        yaml: "steps:\n  - run: [true]\n  - name: prints\n    sh: echo hello; exit 3\n    expect:\n      stdout: '^bye$'\n",
        must_say: &["step 2 `prints`", "expected exit 0, got exit 3", "stdout does not match /^bye$/", "hello", "artifacts: "],
        within: Duration::from_secs(30),
    },
];

fn self_tests(lab: &Arc<LabEnv>, reporter: &Option<Arc<Reporter>>) -> Vec<Trial> {
    SELF_TESTS
        .iter()
        .map(|t| {
            let lab = Arc::clone(lab);
            let reporter = reporter.clone();
            Trial::test(t.id, move || {
                let path = PathBuf::from(format!("<self-test {}>", t.id));
                let case = case::load_str(t.id, &path, t.yaml)
                    .map_err(|e| format!("self-test case does not load: {e:?}"))?;
                let start = Instant::now();
                let outcome =
                    run::run_case(&case, &lab, reporter.as_deref()).map_err(|f| f.to_string());
                let took = start.elapsed();
                let message = match outcome {
                    Ok(_) => return Err("the case passed but must fail".into()),
                    Err(m) => m,
                };
                for needle in t.must_say {
                    if !message.contains(needle) {
                        return Err(
                            format!("the failure message lacks {needle:?}:\n{message}").into()
                        );
                    }
                }
                if took > t.within {
                    return Err(format!(
                        "failed after {took:?}, later than {:?}:\n{message}",
                        t.within
                    )
                    .into());
                }
                // The evidence stays for a failure.
                let console = lab.artifacts.join(t.id).join("console.log");
                if !console.is_file() {
                    return Err(format!("no {} kept", console.display()).into());
                }
                Ok(())
            })
            .with_kind("selftest")
        })
        .collect()
}

/// The known-failure list, checked against the tree's case ids; its
/// problems, rendered, for its own `validate/` trial.
/// The repository's list goes with the repository's cases: another tree
/// (PMEM_LAB_CASES) has none unless PMEM_LAB_KNOWN_FAILURES names one.
fn known_failures(
    manifest: &Path,
    root: &Path,
    ids: &[&str],
) -> (PathBuf, Result<Vec<KnownFailure>, String>) {
    let own = manifest.join("../cases").canonicalize().ok().as_deref() == Some(root);
    let path = match pmem_lab_env::vars::KNOWN_FAILURES.get() {
        Some(p) => PathBuf::from(p),
        None if own => manifest.join("../known-failures.yaml"),
        None => return (PathBuf::from("known-failures.yaml"), Ok(Vec::new())),
    };
    let list = known::load(&path, ids).map_err(|errs| {
        errs.iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n\n")
    });
    (path, list)
}

fn vm_trial(
    case: Case,
    lab: Arc<LabEnv>,
    reporter: Option<Arc<Reporter>>,
    known: Arc<Vec<KnownFailure>>,
    cold_views: Arc<Option<HashMap<String, serde_json::Value>>>,
) -> Trial {
    Trial::ignorable_test(case.id.clone(), move || {
        let start = Instant::now();
        // A case for a newer QEMU than this run's, or for kernel options this
        // kernel lacks, is skipped with the reason (the runner's preflight
        // would fail it the same way).
        if let Some(why) = pmem_lab_harness::run::preflight::unsupported(&case, &lab) {
            let why = format!("skipped: {why}");
            if let Some(r) = &reporter {
                r.case(CaseRecord {
                    id: case.id.clone(),
                    outcome: Outcome::Ignored(why.clone()),
                    duration: start.elapsed(),
                    boot: None,
                    acpi_tables: None,
                    class: None,
                    start: None,
                    setup_view: None,
                    compared_with_cold: false,
                });
            }
            return Ok(Completion::ignored_with(why));
        }
        let result = run::run_case(&case, &lab, reporter.as_deref());
        let class = result.as_ref().err().map(|f| f.failure.class());
        let release = pmem_lab_env::vars::KERNEL_RELEASE
            .get_str()
            .unwrap_or_default();
        let listed = known.iter().find(|k| k.covers(&case.id, &release));
        let cold = cold_views.as_ref().as_ref().and_then(|v| v.get(&case.id));
        let judged = verdict::judge(
            &case.id,
            result.as_ref().map_err(|f| f.to_string()),
            listed,
            cold,
        );
        let passed = result.as_ref().ok();
        if let (Some(p), Verdict::Pass) = (passed, &judged.verdict) {
            eprintln!("{}", verdict::passed_line(&case.id, p, &lab.qemu_version));
        }
        if let Some(r) = &reporter {
            r.case(CaseRecord {
                id: case.id.clone(),
                outcome: judged.outcome,
                duration: start.elapsed(),
                boot: passed.map(|p| p.boot),
                acpi_tables: passed.and_then(|p| p.acpi_tables),
                class,
                start: passed.map(|p| p.start),
                setup_view: passed.map(|p| p.setup_view.clone()),
                compared_with_cold: judged.compared_with_cold,
            });
        }
        match judged.verdict {
            Verdict::Pass => Ok(Completion::Completed),
            Verdict::Ignore(why) => Ok(Completion::ignored_with(why)),
            Verdict::Fail(m) => Err(Failed::from(m)),
        }
    })
    .with_kind("vm")
}
