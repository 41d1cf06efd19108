//! How many VMs the lab runs at a time when `--vms` does not say.
//!
//! Chosen by measurement on the machines the lab targets (docs/performance.md,
//! "VMs at a time"): a case's guest spends much of its time asleep — the
//! kernel's ARS re-query, ndctl's polling, a watched load's stop — so one VM
//! per core leaves cores idle, and the suite finishes sooner with more VMs
//! than cores, up to a point where TCG's vCPU threads only queue. Each VM
//! also needs host memory (its RAM as it is touched, a restored snapshot's
//! pages, QEMU itself): the count is bounded by what is available.

/// VMs per core (measured: see the module's text).
pub const PER_CORE: usize = 2;
/// Host memory one VM of the suite needs at most, in bytes (measured peak
/// resident size of QEMU for the largest machines, rounded up).
pub const MEMORY_PER_VM: u64 = 3 << 30;

/// The default: [`PER_CORE`] per core, at most as many as fit in the
/// host's available memory at [`MEMORY_PER_VM`] each, at least one.
pub fn default_vms() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| mem_available(&m));
    choose(cores, available)
}

/// [`default_vms`] for `cores` and `available` bytes (None: unknown).
pub fn choose(cores: usize, available: Option<u64>) -> usize {
    let by_cores = cores.max(1) * PER_CORE;
    let by_memory = available.map_or(usize::MAX, |a| (a / MEMORY_PER_VM) as usize);
    by_cores.min(by_memory).max(1)
}

/// MemAvailable of /proc/meminfo, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cores_and_memory_bound_the_count() {
        let gib = 1u64 << 30;
        assert_eq!(choose(2, Some(24 * gib)), 2 * PER_CORE);
        // Memory for fewer VMs than the cores would take.
        assert_eq!(
            choose(16, Some(7 * gib)),
            (7 * gib / MEMORY_PER_VM) as usize
        );
        // Never none, whatever the host says.
        assert_eq!(choose(2, Some(gib)), 1);
        assert_eq!(choose(0, None), PER_CORE);
    }

    #[test]
    fn available_memory_is_read_from_meminfo() {
        let m =
            "MemTotal:       24589672 kB\nMemFree:         1000 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(mem_available(m), Some(20_000_000 * 1024));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
    }
}
