//! What a run needs from the build and the user, read once from the
//! environment contract ([`pmem_lab_env::vars`]) that `cargo xtask lab` sets.

use crate::vm::machine::Accel;
use pmem_lab_env::qemu::Qemu;
use pmem_lab_env::vars;
use std::path::{Path, PathBuf};

/// What the runner needs from the build: set by `cargo xtask lab` through
/// the environment (see [`LabEnv::from_env`]).
#[derive(Debug, Clone)]
pub struct LabEnv {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The kernel's .config, copied next to a failure's artifacts.
    pub kernel_config: Option<PathBuf>,
    pub accel: Accel,
    pub artifacts: PathBuf,
    pub keep_passed: bool,
    /// Save and restore VM snapshots ([`crate::boot::vm_snapshot`]); off with
    /// PMEM_LAB_COLD=1.
    pub snapshots: bool,
    /// The poison model where a case does not set `machine.poison`
    /// (PMEM_LAB_POISON_DEFAULT=off: only where it sets it).
    pub poison_default: bool,
    /// The cases root the run loaded (for reproducers).
    pub cases_root: Option<PathBuf>,
    /// The lab's build cache (QEMU's ACPI tables per machine shape go to
    /// `acpi/` in it): PMEM_LAB_CACHE, else ~/.cache/pmem-lab.
    pub cache: PathBuf,
    /// The QEMU every VM of the run starts (see [`pmem_lab_env::qemu`]).
    pub qemu: Qemu,
    /// Its version (`7.2.22`), for every case line and report.
    pub qemu_version: String,
}

/// Why the environment xtask hands over cannot run cases.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("{var}={} does not exist: run `cargo xtask lab` to build it", path.display())]
    Missing { var: &'static str, path: PathBuf },
    #[error("{var}={value}: use {allowed}")]
    Value {
        var: &'static str,
        value: String,
        allowed: &'static str,
    },
    #[error("{0}")]
    Qemu(pmem_lab_env::qemu::QemuError),
    #[error("QEMU does not start: {0}")]
    QemuStart(std::io::Error),
}

impl LabEnv {
    /// `Ok(None)` when no kernel/initrd is configured: VM cases are then
    /// listed as ignored with the reason.
    pub fn from_env(default_artifacts: &Path) -> Result<Option<LabEnv>, EnvError> {
        let (Some(kernel), Some(initrd)) = (vars::KERNEL.get(), vars::INITRD.get()) else {
            return Ok(None);
        };
        let (kernel, initrd) = (PathBuf::from(kernel), PathBuf::from(initrd));
        for (var, p) in [(vars::KERNEL, &kernel), (vars::INITRD, &initrd)] {
            if !p.is_file() {
                return Err(EnvError::Missing {
                    var: var.name,
                    path: p.clone(),
                });
            }
        }
        let artifacts = vars::ARTIFACTS
            .get()
            .map(PathBuf::from)
            .unwrap_or_else(|| default_artifacts.to_path_buf());
        let accel = match vars::ACCEL.get_str().as_deref() {
            Some("kvm") => Accel::Kvm,
            Some("tcg") | None => Accel::Tcg,
            Some(other) => {
                return Err(EnvError::Value {
                    var: vars::ACCEL.name,
                    value: other.to_string(),
                    allowed: "kvm or tcg",
                })
            }
        };
        let qemu = Qemu::from_env().map_err(EnvError::Qemu)?;
        let qemu_version = qemu
            .version_line()
            .map(|l| pmem_lab_env::qemu::short_version(&l))
            .map_err(EnvError::QemuStart)?;
        Ok(Some(LabEnv {
            kernel,
            initrd,
            accel,
            artifacts,
            keep_passed: vars::KEEP.is_on(),
            snapshots: !vars::COLD.is_on(),
            poison_default: match vars::POISON_DEFAULT.get_str().as_deref() {
                Some("off") => false,
                Some("on") | None => true,
                Some(other) => {
                    return Err(EnvError::Value {
                        var: vars::POISON_DEFAULT.name,
                        value: other.to_string(),
                        allowed: "on or off",
                    })
                }
            },
            kernel_config: vars::KERNEL_CONFIG.get().map(PathBuf::from),
            cases_root: None,
            cache: pmem_lab_env::default_cache(),
            qemu,
            qemu_version,
        }))
    }
}

/// A run's environment with every file under `dir`, for unit tests.
#[cfg(test)]
pub(crate) fn test_env(dir: &Path) -> LabEnv {
    LabEnv {
        kernel: dir.join("bzImage"),
        initrd: dir.join("initrd"),
        kernel_config: Some(dir.join("config")),
        accel: Accel::Tcg,
        artifacts: dir.join("artifacts"),
        keep_passed: false,
        snapshots: true,
        poison_default: true,
        cases_root: None,
        cache: dir.join("cache"),
        qemu: Qemu::at(dir.join("qemu")),
        qemu_version: "7.2.22".into(),
    }
}
