//! What makes a failed case's folder a bundle someone else can act on.

use crate::case::Case;
use crate::vm::lab_env::LabEnv;
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
    let q = |p: &Path| pmem_lab_env::shell_quote(&p.display().to_string());
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
    // A run without VM snapshots is replayed without them; with them, the
    // replay restores the same snapshot if the cache still has it.
    if !env.poison_default {
        env_vars.push(format!("{}=off", vars::POISON_DEFAULT.name));
    }
    if !env.snapshots {
        env_vars.push(format!("{}=1", vars::COLD.name));
    }
    format!(
        "#!/bin/sh\n# Replays `{id}` on the kernel and image it failed with.\n\
         cd {ws} &&\n{vars} \\\n  cargo test -p pmem-lab-harness --test lab -- --exact '{id}' \"$@\"\n",
        id = case.id,
        ws = q(workspace),
        vars = env_vars.join(" \\\n"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::machine::Accel;
    use pmem_lab_env::qemu::Qemu;
    use std::path::PathBuf;

    #[test]
    fn the_reproducer_replays_exactly_this_case_with_the_same_parts() {
        let case = crate::case::load_str(
            "devdax/s3-consume[2M]",
            Path::new("/w/cases/devdax/s3-consume.yaml"),
            "steps:\n  - run: [true]\n",
        )
        .unwrap();
        let env = LabEnv {
            kernel: PathBuf::from("/cache/kernel/k1/bzImage"),
            initrd: PathBuf::from("/cache/it's/initrd.cpio"),
            kernel_config: Some(PathBuf::from("/cache/kernel/k1/config")),
            accel: Accel::Tcg,
            artifacts: PathBuf::from("/w/target/pmem-lab/artifacts"),
            keep_passed: false,
            snapshots: true,
            poison_default: true,
            cases_root: Some(PathBuf::from("/w/cases")),
            cache: PathBuf::from("/cache"),
            qemu: Qemu::at(PathBuf::from("/usr/bin/qemu-system-x86_64")),
            qemu_version: "7.2.22".into(),
        };
        let script = reproducer(&case, &env);
        assert!(script.starts_with("#!/bin/sh\n"), "{script}");
        for line in [
            // Plain paths as they are, the others quoted.
            "PMEM_LAB_KERNEL=/cache/kernel/k1/bzImage",
            r"PMEM_LAB_INITRD='/cache/it'\''s/initrd.cpio'",
            "PMEM_LAB_ACCEL=tcg",
            "PMEM_LAB_QEMU=/usr/bin/qemu-system-x86_64",
            "PMEM_LAB_ARTIFACTS='/w/target/pmem-lab/artifacts/devdax/s3-consume[2M]/replay'",
            "PMEM_LAB_KEEP=1",
            "PMEM_LAB_CASES=/w/cases",
            "PMEM_LAB_KERNEL_CONFIG=/cache/kernel/k1/config",
            "--exact 'devdax/s3-consume[2M]'",
        ] {
            assert!(script.contains(line), "{line} not in:\n{script}");
        }
        assert!(!script.contains("PMEM_LAB_COLD"), "{script}");
        let cold = LabEnv {
            snapshots: false,
            ..env.clone()
        };
        assert!(reproducer(&case, &cold).contains("PMEM_LAB_COLD=1"));
        assert!(!script.contains("PMEM_LAB_POISON_DEFAULT"), "{script}");
        let off = LabEnv {
            poison_default: false,
            ..env
        };
        assert!(reproducer(&case, &off).contains("PMEM_LAB_POISON_DEFAULT=off"));
    }
}
