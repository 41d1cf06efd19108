//! Every `PMEM_LAB_*` variable the lab reads, with who sets it and what it
//! means. docs/architecture.md's table is checked against [`ALL`] by a test,
//! so the two cannot drift apart.

use std::ffi::OsString;

/// One environment variable of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Var {
    pub name: &'static str,
    /// `xtask`, `user`, or both.
    pub set_by: &'static str,
    pub meaning: &'static str,
}

impl Var {
    /// The value, if set (an empty value counts as unset).
    pub fn get(self) -> Option<OsString> {
        std::env::var_os(self.name).filter(|v| !v.is_empty())
    }

    /// The value as UTF-8, if set.
    pub fn get_str(self) -> Option<String> {
        self.get().and_then(|v| v.into_string().ok())
    }

    /// `1` means on; anything else (or unset) off.
    pub fn is_on(self) -> bool {
        self.get_str().is_some_and(|v| v == "1")
    }
}

macro_rules! vars {
    ($($(#[$doc:meta])* $id:ident = $name:literal, $set_by:literal, $meaning:literal;)*) => {
        $( $(#[$doc])* pub const $id: Var = Var { name: $name, set_by: $set_by, meaning: $meaning }; )*
        /// Every variable, in the order docs/architecture.md lists them.
        pub const ALL: &[Var] = &[$($id),*];
    };
}

vars! {
    KERNEL = "PMEM_LAB_KERNEL", "xtask",
        "the bzImage VM trials boot; without it and PMEM_LAB_INITRD (plain `cargo test`) VM trials are marked ignored and the reason is printed once";
    INITRD = "PMEM_LAB_INITRD", "xtask", "the guest initramfs VM trials boot";
    KERNEL_CONFIG = "PMEM_LAB_KERNEL_CONFIG", "xtask",
        "the kernel's .config: copied into a failed case's artifacts, read by preflight checks";
    KERNEL_RELEASE = "PMEM_LAB_KERNEL_RELEASE", "xtask",
        "the kernel release, matched against known-failures.yaml's kernel ranges";
    ACCEL = "PMEM_LAB_ACCEL", "xtask / user", "`kvm` or `tcg`; the user may force it";
    QEMU = "PMEM_LAB_QEMU", "xtask / user",
        "the qemu-system-x86_64 binary (`--qemu`); default: the one on PATH, else the lab's private copy in the cache";
    ARTIFACTS = "PMEM_LAB_ARTIFACTS", "xtask / user", "artifacts root (default target/pmem-lab/artifacts)";
    REPORT = "PMEM_LAB_REPORT", "user", "report folder (default: `report/` beside the artifacts root)";
    CACHE = "PMEM_LAB_CACHE", "xtask / user",
        "build cache directory (`--cache`); the harness keeps QEMU's ACPI tables per machine shape in its `acpi/`";
    KEEP = "PMEM_LAB_KEEP", "user", "`1`: keep passing cases' artifacts too";
    EQUIVALENCE = "PMEM_LAB_EQUIVALENCE", "xtask",
        "events.jsonl of a cold run (`cargo xtask lab --equivalence`): a passed case whose first oracle observation differs from its cold one fails";
    SNAPSHOT_GB = "PMEM_LAB_SNAPSHOT_GB", "user",
        "disk budget of the VM snapshots in the cache, in GB (default 12); the least recently used go first";
    COLD = "PMEM_LAB_COLD", "xtask / user",
        "`1` (`cargo xtask lab --cold`): every case boots cold; no VM snapshot is saved or restored";
    POISON_DEFAULT = "PMEM_LAB_POISON_DEFAULT", "user",
        "`off`: the poison model runs only where a case sets `machine.poison: true` (to measure it: `cargo xtask bench`); default `on`, where the platform can know the lines";
    QEMU_VERSION = "PMEM_LAB_QEMU_VERSION", "xtask",
        "`--version` line of the QEMU in PMEM_LAB_QEMU, as xtask read it (each QEMU start costs 0.05-0.15 s of a run)";
    CASES = "PMEM_LAB_CASES", "user", "cases root (default `cases/`)";
    KNOWN_FAILURES = "PMEM_LAB_KNOWN_FAILURES", "user", "known-failures file (default `known-failures.yaml`)";
    TMPDIR = "PMEM_LAB_TMPDIR", "user", "where per-VM private dirs (sockets, NVDIMM files) go";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_prefixed() {
        for (i, v) in ALL.iter().enumerate() {
            assert!(v.name.starts_with("PMEM_LAB_"), "{}", v.name);
            assert!(!ALL[..i].iter().any(|o| o.name == v.name), "{}", v.name);
        }
    }

    /// docs/architecture.md lists every variable, and no other.
    #[test]
    fn the_architecture_doc_lists_every_variable() {
        let doc = include_str!("../../../docs/architecture.md");
        let listed: Vec<&str> = doc
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .filter(|n| n.starts_with("PMEM_LAB_"))
            .collect();
        let known: Vec<&str> = ALL.iter().map(|v| v.name).collect();
        assert_eq!(listed, known, "docs/architecture.md's variable table");
    }
}
