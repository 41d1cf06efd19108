//! The poison model: which cache lines of the NVDIMMs are poisoned, so that
//! a load of one, by any program or by the kernel, takes the machine check
//! hardware would raise there.
//!
//! QEMU's memory holds no poison. The lab keeps the set here and arms a
//! read watch point on every kernel alias of each line through QEMU's
//! gdbstub ([`watcher`]); when a vCPU stops at a load of one, the lab checks
//! the stopped CPU's translation, injects the data-load machine check for
//! that mode ([`crate::mce::Consumer`]) and resumes it.
//!
//! Where the set comes from: the machine's latent errors (in the platform's
//! list from boot) and every change the lab's ACPI table makes to the
//! platform's error list, which it logs to the host as it makes it
//! ([`platform_log`]): `ndctl inject-error` adds, the clear DSM (`ndctl
//! clear-errors`, the kernel's recovery write, a write over a bad sector of
//! the block device) and inject-clear remove. The watcher reads that log at
//! every stop, so a line cleared a moment ago is never consumed.
//!
//! Stores do not consume: the watch points are read watch points. A store
//! does not clear either: on the NVDIMMs this platform models, poison goes
//! away only through the clear command, which is why the pmem driver calls
//! it before it writes over a bad sector (drivers/nvdimm/pmem.c,
//! `pmem_clear_poison()`).

pub mod kernel;
pub mod maps;
pub mod platform_log;
pub mod rewind;
pub mod watcher;

pub use platform_log::{Change, ChangeKind};

/// Why the poison model could not start or answer.
#[derive(Debug, thiserror::Error)]
pub enum PoisonError {
    /// gdb's stub (QEMU's), the model's only way into the vCPUs.
    #[error("gdb stub: {0}")]
    Gdb(#[from] super::gdb::GdbError),
    /// A kernel symbol the model needs, from System.map or the guest's
    /// kallsyms.
    #[error("{}: {why}", from.display())]
    Symbols {
        from: std::path::PathBuf,
        why: String,
    },
    /// The platform's error-list log (the lab's ACPI table writes it).
    #[error("{}: {source}", path.display())]
    Log {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    LogLine(#[from] platform_log::BadLine),
    /// The watcher thread ended (its reason, or QEMU closed the stub).
    #[error("the poison watcher has stopped: {0}")]
    Stopped(String),
    #[error("the poison watcher did not answer in 30 s")]
    NoAnswer,
}
use pmem_lab_spec::machine::ERROR_UNIT;
use std::collections::BTreeMap;

/// A line is this many bytes (what one machine check names: MCi_MISC LSB 6).
pub const LINE: u64 = pmem_lab_spec::mce::GRANULE;

/// How a line came to be poisoned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// In the platform's list from boot (`machine.nvdimms[].errors`).
    Latent,
    /// Injected through the platform (ARS error inject).
    Injected,
    /// Named by a machine check the lab injected (`inject` step): the
    /// line is bad from then on, though the platform's list does not hold
    /// it (a real platform would find it at its next scrub).
    MachineCheck,
    /// In a CXL device's poison list (a `cxl_inject_poison` step, or what
    /// the device lists after each step: the kernel's clear_poison removes
    /// it there).
    Cxl,
}

/// The poisoned lines, by guest-physical address of their first byte.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Lines(BTreeMap<u64, Source>);

impl Lines {
    /// Every line of `[address, address + length)`.
    pub fn add_range(&mut self, address: u64, length: u64, source: Source) {
        let first = address / LINE * LINE;
        let end = (address + length).div_ceil(LINE) * LINE;
        for line in (first..end).step_by(LINE as usize) {
            self.0.entry(line).or_insert(source);
        }
    }

    /// Apply one change of the platform's list.
    pub fn apply(&mut self, change: &Change) {
        let (start, end) = (change.first * ERROR_UNIT, change.end * ERROR_UNIT);
        match change.kind {
            ChangeKind::Injected => self.add_range(start, end - start, Source::Injected),
            ChangeKind::Cleared => {
                self.0.retain(|line, _| !(start..end).contains(line));
            }
            ChangeKind::Withdrawn => {
                self.0
                    .retain(|line, s| !((start..end).contains(line) && *s == Source::Injected));
            }
        }
    }

    /// Make the CXL lines exactly these.
    pub fn set_cxl(&mut self, lines: &[u64]) {
        self.0.retain(|_, s| *s != Source::Cxl);
        for &l in lines {
            self.add_range(l, LINE, Source::Cxl);
        }
    }

    /// The poisoned line holding `address`, if it is poisoned.
    pub fn line_of(&self, address: u64) -> Option<u64> {
        let line = address / LINE * LINE;
        self.0.contains_key(&line).then_some(line)
    }

    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.0.keys().copied()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(kind: ChangeKind, first: u64, end: u64) -> Change {
        Change { kind, first, end }
    }

    #[test]
    fn a_unit_is_four_lines_and_a_clear_takes_them_whatever_their_source() {
        let mut l = Lines::default();
        l.add_range(0x1_0000_0200, 512, Source::Latent);
        assert_eq!(l.len(), 8);
        l.apply(&change(ChangeKind::Injected, 0x100_0010, 0x100_0011));
        assert_eq!(l.len(), 12);
        assert_eq!(l.line_of(0x1_0000_1013), Some(0x1_0000_1000));
        assert_eq!(l.line_of(0x1_0000_1100), None);
        l.apply(&change(ChangeKind::Cleared, 0x100_0002, 0x100_0004));
        assert!(l.is_empty() || l.iter().all(|a| a >= 0x1_0000_0400));
        assert_eq!(l.len(), 4);
        l.apply(&change(ChangeKind::Cleared, 0x100_0010, 0x100_0011));
        assert!(l.is_empty());
    }

    #[test]
    fn withdrawing_injections_keeps_latent_errors() {
        let mut l = Lines::default();
        l.add_range(0x1_0000_0000, 256, Source::Latent);
        l.apply(&change(ChangeKind::Injected, 0x100_0000, 0x100_0002));
        assert_eq!(l.len(), 8);
        l.apply(&change(ChangeKind::Withdrawn, 0x100_0000, 0x100_0002));
        assert_eq!(
            l.iter().collect::<Vec<_>>(),
            [0x1_0000_0000, 0x1_0000_0040, 0x1_0000_0080, 0x1_0000_00c0]
        );
    }

    #[test]
    fn unaligned_ranges_cover_every_line_they_touch() {
        let mut l = Lines::default();
        l.add_range(0x1030, 0x20, Source::Latent);
        assert_eq!(l.iter().collect::<Vec<_>>(), [0x1000, 0x1040]);
    }
}
