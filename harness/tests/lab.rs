//! The lab's test runner: one libtest-mimic trial per case file.
//!
//! `validate/<case>` trials parse and check every case file and always run.
//! `<case>` trials boot a VM; they need the kernel and initramfs that
//! `cargo xtask lab` builds and passes in PMEM_LAB_KERNEL / PMEM_LAB_INITRD.
//! Without them (plain `cargo test`) the VM trials are listed as ignored
//! with the reason. If any case file is invalid, no VM starts at all.

use libtest_mimic::{Arguments, Completion, Failed, Trial};
use pmem_lab_harness::case::{self, Case};
use pmem_lab_harness::runner::{self, LabEnv};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn main() {
    let args = Arguments::from_args();
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = std::env::var_os("PMEM_LAB_CASES")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../cases"));
    let loaded = match case::load_dir(&root) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let invalid = loaded.iter().filter(|l| l.case.is_err()).count();
    let default_artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pmem-lab-artifacts");
    let lab = LabEnv::from_env(&default_artifacts);
    let skip_reason: Option<String> = match (&lab, invalid) {
        (_, n) if n > 0 => Some(format!("not started: {n} case file(s) are invalid (see validate/ trials)")),
        (Err(e), _) => Some(e.clone()),
        (Ok(None), _) => Some(
            "needs the lab's kernel and initramfs: run `cargo xtask lab` (sets PMEM_LAB_KERNEL and PMEM_LAB_INITRD)"
                .to_string(),
        ),
        (Ok(Some(_)), _) => None,
    };
    let lab = lab.ok().flatten().map(Arc::new);

    let mut trials = Vec::new();
    for l in &loaded {
        let errors = l.case.as_ref().err().cloned();
        trials.push(
            Trial::test(format!("validate/{}", l.id), move || match &errors {
                None => Ok(()),
                Some(errs) => Err(Failed::from(
                    errs.iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("\n\n"),
                )),
            })
            .with_kind("validate"),
        );
    }
    for l in &loaded {
        let Ok(case) = &l.case else { continue };
        let trial = match (&skip_reason, &lab) {
            (None, Some(lab)) => vm_trial(case.clone(), Arc::clone(lab)),
            (reason, _) => {
                let reason = reason.clone().unwrap_or_default();
                Trial::ignorable_test(case.id.clone(), move || {
                    Ok(Completion::ignored_with(reason))
                })
                .with_kind("vm")
            }
        };
        trials.push(trial);
    }
    libtest_mimic::run(&args, trials).exit();
}

fn vm_trial(case: Case, lab: Arc<LabEnv>) -> Trial {
    Trial::test(case.id.clone(), move || {
        let passed = runner::run_case(&case, &lab).map_err(Failed::from)?;
        eprintln!(
            "{}: agent ready in {:.2}s, case took {:.2}s ({})",
            case.id,
            passed.boot.as_secs_f64(),
            passed.total.as_secs_f64(),
            passed.kernel_release
        );
        Ok(())
    })
    .with_kind("vm")
}
