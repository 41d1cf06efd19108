//! What makes a failed case's folder a bundle someone else can act on.

use crate::case::Case;
use crate::lab_env::LabEnv;
use pmem_lab_env::vars;
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
    let mut env_vars = vec![
        format!("{}={}", vars::KERNEL.name, q(&env.kernel)),
        format!("{}={}", vars::INITRD.name, q(&env.initrd)),
        format!("{}={}", vars::ACCEL.name, env.accel.name()),
        format!("{}={}", vars::QEMU.name, q(&env.qemu.binary)),
        // The replay's artifacts go beside this bundle, not over it.
        format!(
            "{}={}",
            vars::ARTIFACTS.name,
            q(&env.artifacts.join(&case.id).join("replay"))
        ),
        format!("{}=1", vars::KEEP.name),
        // QEMU's ACPI tables for the machine come from this cache.
        format!("{}={}", vars::CACHE.name, q(&env.cache)),
    ];
    if let Some(root) = &env.cases_root {
        env_vars.push(format!("{}={}", vars::CASES.name, q(root)));
    }
    if let Some(config) = &env.kernel_config {
        env_vars.push(format!("{}={}", vars::KERNEL_CONFIG.name, q(config)));
    }
    format!(
        "#!/bin/sh\n# Replays `{id}` on the kernel and image it failed with.\n\
         cd {ws} &&\n{vars} \\\n  cargo test -p pmem-lab-harness --test lab -- --exact '{id}' \"$@\"\n",
        id = case.id,
        ws = q(workspace),
        vars = env_vars.join(" \\\n"),
    )
}
