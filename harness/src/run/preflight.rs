//! Checks a case's needs before anything boots.

use crate::vm::lab_env::LabEnv;
use std::fs;
use std::path::{Path, PathBuf};

/// What the case needs and this run lacks.
#[derive(Debug, thiserror::Error)]
pub enum Unmet {
    #[error("this case needs nfit_test, but the kernel has no nfit_test modules ({} is missing): \
             `cargo xtask kernel` builds them from tools/testing/nvdimm", module.display())]
    NfitTestModules { module: PathBuf },
    /// Kernel options the case's machine needs (`needs`: what it has that
    /// needs them).
    #[error("this case {needs}, which needs {} ({forms}) in the kernel config ({})", options.join(", "), config.display())]
    Config {
        needs: &'static str,
        options: Vec<&'static str>,
        forms: &'static str,
        config: PathBuf,
    },
    #[error("{}: {source}", config.display())]
    Unreadable {
        config: PathBuf,
        source: std::io::Error,
    },
    /// The run's QEMU is too old (the machine's words for what it needs).
    #[error("this case {0}")]
    Qemu(String),
    /// The id does not name a folder inside the artifacts root.
    #[error("case id `{0}` does not name a folder inside the artifacts root")]
    Id(String),
}

pub use pmem_lab_env::program;

/// Options tools/testing/nvdimm/config_check.c insists on, as modules
/// (nfit_test replaces them).
const NFIT_TEST_CONFIG: [&str; 6] = [
    "CONFIG_LIBNVDIMM",
    "CONFIG_BLK_DEV_PMEM",
    "CONFIG_ND_BTT",
    "CONFIG_ND_PFN",
    "CONFIG_DEV_DAX",
    "CONFIG_DEV_DAX_PMEM",
];

/// A case that needs nfit_test on a kernel without it fails here, before
/// boot, with the reason.
pub fn nfit_test(env: &LabEnv) -> Result<(), Unmet> {
    let dir = env
        .kernel
        .parent()
        .map(|p| p.join("nfit_test"))
        .unwrap_or_default();
    let module = dir.join("nfit_test.ko");
    if !module.is_file() {
        return Err(Unmet::NfitTestModules { module });
    }
    if let Some(config) = &env.kernel_config {
        let missing = unset(config, &NFIT_TEST_CONFIG, &["m"])?;
        if !missing.is_empty() {
            return Err(Unmet::Config {
                needs: "needs nfit_test",
                options: missing,
                forms: "=m",
                config: config.clone(),
            });
        }
    }
    Ok(())
}

/// A case with e820 pmem on a kernel without the legacy pmem driver fails
/// here, before boot, with the reason (the guest would boot with RAM
/// missing and no e820 bus).
pub fn e820(env: &LabEnv) -> Result<(), Unmet> {
    let Some(config) = &env.kernel_config else {
        return Ok(());
    };
    let missing = unbuilt(config, &["CONFIG_X86_PMEM_LEGACY"])?;
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Unmet::Config {
            needs: "has machine.e820_pmem",
            options: missing,
            forms: "=m or =y",
            config: config.clone(),
        })
    }
}

/// A case that needs a newer QEMU than the run's fails here with the
/// release it needs and how to get one. (The lab's runner lists such cases
/// as ignored with the same reason; this is for a case run anyway.)
pub fn qemu(case: &crate::case::Case, env: &LabEnv) -> Result<(), Unmet> {
    let have = pmem_lab_env::qemu::parse_version(&env.qemu_version)
        .map(|(major, minor)| pmem_lab_spec::machine::QemuVersion::new(major, minor));
    match case
        .needs_qemu()
        .and_then(|n| n.unmet(have, &env.qemu_version))
    {
        Some(why) => Err(Unmet::Qemu(why)),
        None => Ok(()),
    }
}

/// Why this run's QEMU or kernel cannot take `case` at all: the lab then
/// lists the case as skipped with this reason (a newer QEMU, a kernel with
/// the options, can run it); `None` when nothing stands in the way.
pub fn unsupported(case: &crate::case::Case, env: &LabEnv) -> Option<Unmet> {
    if let Err(why) = qemu(case, env) {
        return Some(why);
    }
    if !case.machine.cxl.is_empty() {
        return cxl(env).err();
    }
    None
}

/// Options a CXL machine's cases need: the drivers that find the devices,
/// the windows and the regions, and event tracing for the poison list.
const CXL_CONFIG: [&str; 7] = [
    "CONFIG_CXL_ACPI",
    "CONFIG_CXL_PCI",
    "CONFIG_CXL_MEM",
    "CONFIG_CXL_PMEM",
    "CONFIG_CXL_REGION",
    "CONFIG_CXL_REGION_INVALIDATION_TEST",
    "CONFIG_EVENT_TRACING",
];

/// A CXL case on a kernel without the CXL stack fails here, naming what is
/// missing (images/kernel/pmem-lab.config says why each is there).
pub fn cxl(env: &LabEnv) -> Result<(), Unmet> {
    let Some(config) = &env.kernel_config else {
        return Ok(());
    };
    let missing = unbuilt(config, &CXL_CONFIG)?;
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Unmet::Config {
            needs: "has machine.cxl",
            options: missing,
            forms: "=y or =m",
            config: config.clone(),
        })
    }
}

/// The `options` a kernel config does not build (neither `=y` nor `=m`).
pub(crate) fn unbuilt(config: &Path, options: &[&'static str]) -> Result<Vec<&'static str>, Unmet> {
    unset(config, options, &["y", "m"])
}

/// The `options` a kernel config sets to none of `values`: the one reading
/// of a config's lines before boot.
fn unset(
    config: &Path,
    options: &[&'static str],
    values: &[&str],
) -> Result<Vec<&'static str>, Unmet> {
    let text = fs::read_to_string(config).map_err(unreadable(config))?;
    let set: std::collections::HashSet<(&str, &str)> =
        text.lines().filter_map(|l| l.split_once('=')).collect();
    Ok(options
        .iter()
        .copied()
        .filter(|o| !values.iter().any(|v| set.contains(&(*o, *v))))
        .collect())
}

fn unreadable(config: &Path) -> impl FnOnce(std::io::Error) -> Unmet + '_ {
    move |source| Unmet::Unreadable {
        config: config.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn env_in(dir: &Path) -> LabEnv {
        crate::vm::lab_env::test_env(dir)
    }

    #[test]
    fn nfit_test_preflight_names_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let env = env_in(dir.path());
        let e = nfit_test(&env).unwrap_err().to_string();
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
        let e = nfit_test(&env).unwrap_err().to_string();
        assert!(
            e.contains("needs CONFIG_LIBNVDIMM, ") && e.contains("CONFIG_DEV_DAX_PMEM (=m)"),
            "{e}"
        );
        assert!(!e.contains("CONFIG_BLK_DEV_PMEM"), "{e}");
        let all: Vec<String> = NFIT_TEST_CONFIG.iter().map(|o| format!("{o}=m")).collect();
        fs::write(dir.path().join("config"), all.join("\n")).unwrap();
        assert!(nfit_test(&env).is_ok());
    }

    #[test]
    fn cxl_preflight_names_every_missing_option() {
        let dir = tempfile::tempdir().unwrap();
        let env = env_in(dir.path());
        fs::write(
            dir.path().join("config"),
            "CONFIG_CXL_ACPI=m\nCONFIG_CXL_PCI=m\n",
        )
        .unwrap();
        let e = cxl(&env).unwrap_err().to_string();
        assert!(
            e.contains("CONFIG_CXL_MEM, CONFIG_CXL_PMEM, CONFIG_CXL_REGION,"),
            "{e}"
        );
        assert!(!e.contains("CONFIG_CXL_ACPI"), "{e}");
        let all: Vec<String> = CXL_CONFIG.iter().map(|o| format!("{o}=y")).collect();
        fs::write(dir.path().join("config"), all.join("\n")).unwrap();
        assert!(cxl(&env).is_ok());
    }

    #[test]
    fn a_case_needing_a_newer_qemu_fails_with_the_release_it_needs() {
        let dir = tempfile::tempdir().unwrap();
        let mut env = env_in(dir.path());
        let case = crate::case::load_str(
            "cxl",
            Path::new("cxl.yaml"),
            "machine:\n  cxl:\n    - size: 256M\nsteps:\n  - run: [true]\n",
        )
        .unwrap();
        let e = qemu(&case, &env).unwrap_err().to_string();
        assert!(e.starts_with("this case needs QEMU >= 8.1"), "{e}");
        assert!(unsupported(&case, &env)
            .unwrap()
            .to_string()
            .starts_with("this case needs QEMU >= 8.1"));
        env.qemu_version = "10.0.2".into();
        assert!(qemu(&case, &env).is_ok());
        // A kernel without the CXL options (6.1 has no
        // CXL_REGION_INVALIDATION_TEST): skipped, naming it.
        fs::write(dir.path().join("config"), "CONFIG_CXL_ACPI=m\n").unwrap();
        let why = unsupported(&case, &env).unwrap().to_string();
        assert!(why.contains("CONFIG_CXL_REGION_INVALIDATION_TEST"), "{why}");
    }

    #[test]
    fn e820_preflight_needs_the_legacy_pmem_driver() {
        let dir = tempfile::tempdir().unwrap();
        let env = env_in(dir.path());
        fs::write(dir.path().join("config"), "CONFIG_LIBNVDIMM=m\n").unwrap();
        assert!(e820(&env)
            .unwrap_err()
            .to_string()
            .contains("CONFIG_X86_PMEM_LEGACY"));
        fs::write(dir.path().join("config"), "CONFIG_X86_PMEM_LEGACY=m\n").unwrap();
        assert!(e820(&env).is_ok());
    }
}
