//! `pmem-lab-shell [--check] CASE [--put HOST:GUEST]...`: see
//! [`pmem_lab_harness::run::shell`].
//! Started by `cargo xtask lab shell CASE`: first with `--check`, which only
//! finds and validates the case (so a typo is reported before any build),
//! then, once the kernel and image are ready, with PMEM_LAB_KERNEL,
//! PMEM_LAB_INITRD and PMEM_LAB_ACCEL set.

use pmem_lab_env::put::PutArg;
use pmem_lab_harness::case;
use pmem_lab_harness::run::shell;
use pmem_lab_harness::vm::lab_env::LabEnv;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The binary's errors are rendered once, by `main`.
fn real_main() -> Result<(), Box<dyn std::error::Error>> {
    let usage = "usage: pmem-lab-shell [--check] CASE [--put HOST:GUEST]... (a case id, e.g. devdax/s3-consume[2M])";
    let mut args = std::env::args().skip(1);
    let mut check_only = false;
    let mut id = None;
    let mut extras = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--check" => check_only = true,
            "--put" => extras.push(PutArg::parse(&args.next().ok_or(usage)?)?),
            _ if id.is_none() => id = Some(arg),
            _ => return Err(usage.into()),
        }
    }
    let id = id.ok_or(usage)?;
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = pmem_lab_env::vars::CASES
        .get()
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../cases"));
    let loaded = case::load_dir(&root)?;
    let found = loaded.iter().find(|l| l.id == id).ok_or_else(|| {
        let near: Vec<&str> = loaded
            .iter()
            .map(|l| l.id.as_str())
            .filter(|i| i.contains(id.as_str()))
            .collect();
        let near = if near.is_empty() {
            "`cargo xtask lab -- --list` lists the cases".to_string()
        } else {
            format!("did you mean: {}", near.join(", "))
        };
        format!("no case `{id}` under {}; {near}", root.display())
    })?;
    let case = found.case.as_ref().map_err(|errs| {
        errs.iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    if check_only {
        return Ok(());
    }
    let artifacts = manifest.join("../target/pmem-lab/artifacts");
    let env = LabEnv::from_env(&artifacts)?.ok_or(
        "PMEM_LAB_KERNEL and PMEM_LAB_INITRD are not set: use `cargo xtask lab shell CASE`",
    )?;
    Ok(shell::run(case, &env, &extras)?)
}
