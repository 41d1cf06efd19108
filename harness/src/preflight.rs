//! Checks a case's needs before anything boots.

use crate::lab_env::LabEnv;
use std::fs;

pub use pmem_lab_env::program;

/// Options tools/testing/nvdimm/config_check.c insists on.
const NFIT_TEST_CONFIG: [&str; 6] = [
    "CONFIG_LIBNVDIMM=m",
    "CONFIG_BLK_DEV_PMEM=m",
    "CONFIG_ND_BTT=m",
    "CONFIG_ND_PFN=m",
    "CONFIG_DEV_DAX=m",
    "CONFIG_DEV_DAX_PMEM=m",
];

/// A case that needs nfit_test on a kernel without it fails here, before
/// boot, with the reason.
pub fn nfit_test(env: &LabEnv) -> Result<(), String> {
    let dir = env
        .kernel
        .parent()
        .map(|p| p.join("nfit_test"))
        .unwrap_or_default();
    let module = dir.join("nfit_test.ko");
    if !module.is_file() {
        return Err(format!(
            "this case needs nfit_test, but the kernel has no nfit_test modules ({} is missing): \
             `cargo xtask kernel` builds them from tools/testing/nvdimm",
            module.display()
        ));
    }
    if let Some(config) = &env.kernel_config {
        let text = fs::read_to_string(config).map_err(|e| format!("{}: {e}", config.display()))?;
        let missing: Vec<&str> = NFIT_TEST_CONFIG
            .iter()
            .copied()
            .filter(|o| !text.lines().any(|l| l == *o))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "this case needs nfit_test, which needs {} in the kernel config ({})",
                missing.join(", "),
                config.display()
            ));
        }
    }
    Ok(())
}

/// A case with e820 pmem on a kernel without the legacy pmem driver fails
/// here, before boot, with the reason (the guest would boot with RAM
/// missing and no e820 bus).
pub fn e820(env: &LabEnv) -> Result<(), String> {
    let Some(config) = &env.kernel_config else {
        return Ok(());
    };
    let text = fs::read_to_string(config).map_err(|e| format!("{}: {e}", config.display()))?;
    let have = |o: &str| {
        text.lines()
            .any(|l| l == format!("{o}=m") || l == format!("{o}=y"))
    };
    if have("CONFIG_X86_PMEM_LEGACY") {
        Ok(())
    } else {
        Err(format!(
            "this case has machine.e820_pmem, which needs CONFIG_X86_PMEM_LEGACY (=m or =y) in the kernel config ({})",
            config.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::Accel;
    use std::path::Path;

    fn env_in(dir: &Path) -> LabEnv {
        LabEnv {
            kernel: dir.join("bzImage"),
            initrd: dir.join("initrd"),
            kernel_config: Some(dir.join("config")),
            accel: Accel::Tcg,
            artifacts: dir.join("artifacts"),
            keep_passed: false,
            reporter: None,
            cases_root: None,
            cache: dir.join("cache"),
            qemu: pmem_lab_env::qemu::Qemu::at(dir.join("qemu")),
            qemu_version: "7.2.22".into(),
        }
    }

    #[test]
    fn nfit_test_preflight_names_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let env = env_in(dir.path());
        let e = nfit_test(&env).unwrap_err();
        assert!(
            e.contains("no nfit_test modules") && e.contains("nfit_test.ko"),
            "{e}"
        );
        fs::create_dir(dir.path().join("nfit_test")).unwrap();
        fs::write(dir.path().join("nfit_test/nfit_test.ko"), b"").unwrap();
        fs::write(
            dir.path().join("config"),
            "CONFIG_LIBNVDIMM=y\nCONFIG_BLK_DEV_PMEM=m\n",
        )
        .unwrap();
        let e = nfit_test(&env).unwrap_err();
        assert!(
            e.contains("CONFIG_LIBNVDIMM=m") && e.contains("CONFIG_DEV_DAX_PMEM=m"),
            "{e}"
        );
        assert!(!e.contains("CONFIG_BLK_DEV_PMEM=m"), "{e}");
        fs::write(dir.path().join("config"), NFIT_TEST_CONFIG.join("\n")).unwrap();
        assert!(nfit_test(&env).is_ok());
    }

    #[test]
    fn e820_preflight_needs_the_legacy_pmem_driver() {
        let dir = tempfile::tempdir().unwrap();
        let env = env_in(dir.path());
        fs::write(dir.path().join("config"), "CONFIG_LIBNVDIMM=m\n").unwrap();
        assert!(e820(&env).unwrap_err().contains("CONFIG_X86_PMEM_LEGACY"));
        fs::write(dir.path().join("config"), "CONFIG_X86_PMEM_LEGACY=m\n").unwrap();
        assert!(e820(&env).is_ok());
    }
}
