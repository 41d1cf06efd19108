//! Performing an `inject` step: translate the location, have QEMU raise the
//! machine check, and wait until both QEMU and the guest show it.

use crate::address::Resolved;
use crate::badblocks::{self, Range};
use crate::case::step::InjectAt;
use crate::guest::error::{Absent, Context as _, GuestError};
use crate::guest::setup::Layout;
use crate::guest::Guest;
use crate::mce::Injection;
use crate::vm::VmError;
use std::thread;
use std::time::{Duration, Instant};

/// QEMU's QMP event for every memory error it delivers to the guest.
pub const MEMORY_FAILURE: &str = "MEMORY_FAILURE";

/// What an injection did, for the step log.
#[derive(Debug, Clone)]
pub struct Injected {
    pub resolved: Resolved,
    pub command: String,
    pub took: Duration,
}

impl Injected {
    pub fn describe(&self) -> String {
        let ns: Vec<String> = self
            .resolved
            .namespace_sectors
            .iter()
            .map(|(n, s)| format!("namespace `{n}` data sector {s}"))
            .collect();
        format!(
            "`{}`: GPA {:#x}, region {} sector {}{}{}; seen after {} ms",
            self.command,
            self.resolved.gpa,
            self.resolved.region,
            self.resolved.region_sector,
            if ns.is_empty() {
                " (in no namespace's data)"
            } else {
                ", "
            },
            ns.join(", "),
            self.took.as_millis()
        )
    }
}

/// Inject the step's machine check and wait (up to `timeout`) for QEMU's
/// MEMORY_FAILURE event and for the region's badblocks to list the sector.
/// `cpus`: the machine's, for broadcast.
pub fn inject(
    guest: &mut Guest,
    layout: &Layout,
    step: &InjectAt,
    cpus: u32,
    timeout: Duration,
) -> Result<Injected, GuestError> {
    let InjectAt { kind, at, cpu } = step;
    let (kind, cpu) = (*kind, *cpu);
    let start = Instant::now();
    let resolved = layout
        .geometry
        .resolve(at)
        .context(|| "cannot inject".to_string())?;
    let injection = Injection::new(kind, resolved.gpa, cpu, cpus);
    let command = injection.hmp_command();
    let seen = guest.vm().qmp_event_count(MEMORY_FAILURE);
    let answer = guest.vm().hmp(&command, Duration::from_secs(10))?;
    if !answer.trim().is_empty() {
        return Err(
            VmError::Qmp(format!("QEMU did not take `{command}`: {}", answer.trim())).into(),
        );
    }
    guest
        .vm()
        .wait_qmp_event(MEMORY_FAILURE, seen, timeout)
        .context(|| format!("`{command}`"))?;
    let region = layout.geometry.region(resolved.region)?.dev.clone();
    let want = [Range {
        sector: resolved.region_sector,
        count: 1,
    }];
    let path = format!("/sys/bus/nd/devices/{region}/badblocks");
    let deadline = start + timeout;
    loop {
        let text = guest.read_all(std::slice::from_ref(&path))?.remove(0);
        let have = badblocks::parse_sysfs(&text)?;
        if badblocks::covers(&have, &want) {
            break;
        }
        if Instant::now() > deadline {
            return Err(GuestError::Missing(Absent::Badblock, format!(
                "`{command}` was delivered (QEMU reported {MEMORY_FAILURE}) but after {} s {region} lists \
                 badblocks {}, not sector {}: did the kernel's nfit MCE handler see it? (CONFIG_X86_MCE, \
                 ACPI_NFIT; see dmesg.txt)",
                timeout.as_secs(),
                badblocks::show(&have),
                resolved.region_sector
            )));
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok(Injected {
        resolved,
        command,
        took: start.elapsed(),
    })
}
