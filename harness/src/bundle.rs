//! What makes a failed case's folder a bundle someone else can act on.

use crate::case::Case;
use crate::runner::LabEnv;
use std::fs;
use std::path::Path;

/// What a kept case folder needs beyond the run's own logs to be a bundle
/// someone else can act on: the kernel config, the case file, and a
/// reproducer that replays the case on the same kernel and image.
pub fn write_bundle_extras(case: &Case, env: &LabEnv, dir: &Path) {
    if let Some(config) = &env.kernel_config {
        let _ = fs::copy(config, dir.join("kernel.config"));
    }
    let _ = fs::copy(&case.path, dir.join("case.yaml"));
    let _ = fs::write(dir.join("reproduce.sh"), reproducer(case, env));
}

/// A shell script that reruns exactly this case (matrix cell included) with
/// the same kernel, initramfs and accelerator, from the workspace.
pub fn reproducer(case: &Case, env: &LabEnv) -> String {
    let q = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', r"'\''"));
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."));
    let mut vars = vec![
        format!("PMEM_LAB_KERNEL={}", q(&env.kernel)),
        format!("PMEM_LAB_INITRD={}", q(&env.initrd)),
        format!("PMEM_LAB_ACCEL={}", env.accel.name()),
        // The replay's artifacts go beside this bundle, not over it.
        format!(
            "PMEM_LAB_ARTIFACTS={}",
            q(&env.artifacts.join(&case.id).join("replay"))
        ),
        "PMEM_LAB_KEEP=1".to_string(),
        // QEMU's ACPI tables for the machine come from this cache.
        format!("PMEM_LAB_CACHE={}", q(&env.cache)),
    ];
    if let Some(root) = &env.cases_root {
        vars.push(format!("PMEM_LAB_CASES={}", q(root)));
    }
    if let Some(config) = &env.kernel_config {
        vars.push(format!("PMEM_LAB_KERNEL_CONFIG={}", q(config)));
    }
    format!(
        "#!/bin/sh\n# Replays `{id}` on the kernel and image it failed with.\n\
         cd {ws} &&\n{vars} \\\n  cargo test -p pmem-lab-harness --test lab -- --exact '{id}' \"$@\"\n",
        id = case.id,
        ws = q(workspace),
        vars = vars.join(" \\\n"),
    )
}
