//! `pmem-lab-shell CASE`: see [`pmem_lab_harness::shell`]. Started by
//! `cargo xtask lab shell CASE`, which builds what it needs and sets
//! PMEM_LAB_KERNEL, PMEM_LAB_INITRD and PMEM_LAB_ACCEL.

use pmem_lab_harness::case;
use pmem_lab_harness::runner::LabEnv;
use pmem_lab_harness::shell;
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

fn real_main() -> Result<(), String> {
    let id = std::env::args()
        .nth(1)
        .ok_or("usage: pmem-lab-shell CASE (a case id, e.g. devdax/s3-consume[2M])")?;
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = std::env::var_os("PMEM_LAB_CASES")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../cases"));
    let loaded = case::load_dir(&root)?;
    let found = loaded.iter().find(|l| l.id == id).ok_or_else(|| {
        let near: Vec<&str> = loaded
            .iter()
            .map(|l| l.id.as_str())
            .filter(|i| i.contains(id.as_str()))
            .collect();
        format!(
            "no case `{id}` under {}; matching: {}",
            root.display(),
            near.join(", ")
        )
    })?;
    let case = found.case.as_ref().map_err(|errs| {
        errs.iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    let artifacts = manifest.join("../target/pmem-lab/artifacts");
    let env = LabEnv::from_env(&artifacts)?.ok_or(
        "PMEM_LAB_KERNEL and PMEM_LAB_INITRD are not set: use `cargo xtask lab shell CASE`",
    )?;
    shell::run(case, &env)
}
