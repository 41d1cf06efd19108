//! Machine-check encodings: the one place that says which bits the lab puts
//! in IA32_MCi_STATUS, IA32_MCG_STATUS and IA32_MCi_MISC for each kind of
//! error it emulates, and how that becomes QEMU's HMP `mce` command.
//!
//! References: Intel SDM vol. 3B ch. 16 ("Machine-Check Architecture"),
//! tables "IA32_MCi_STATUS Register", "MCA Compound Error Codes" and "Software
//! Recoverable Errors"; Linux arch/x86/kernel/cpu/mce/severity.c (how the
//! kernel classifies these); drivers/acpi/nfit/mce.c (how nfit turns a logged
//! memory error inside an NVDIMM range into a region badblock).
//!
//! QEMU's `mce [-b] cpu bank status mcg_status addr misc` writes the bank
//! and raises #MC for uncorrected errors. `-b` broadcasts to every vCPU, as
//! real hardware does for these errors; with more than one vCPU Linux needs
//! it (a lone #MC on one CPU waits in vain for the others and panics).

/// IA32_MCi_STATUS bits.
pub mod status {
    /// VAL: the bank holds a valid error.
    pub const VAL: u64 = 1 << 63;
    /// OVER: an earlier error was lost (we never set it).
    pub const OVER: u64 = 1 << 62;
    /// UC: uncorrected.
    pub const UC: u64 = 1 << 61;
    /// EN: error reporting was enabled for this error.
    pub const EN: u64 = 1 << 60;
    /// MISCV: IA32_MCi_MISC is valid (Linux needs it to trust the address).
    pub const MISCV: u64 = 1 << 59;
    /// ADDRV: IA32_MCi_ADDR is valid.
    pub const ADDRV: u64 = 1 << 58;
    /// PCC: processor context corrupt (never for recoverable errors).
    pub const PCC: u64 = 1 << 57;
    /// S: signalled by #MC (software recoverable action optional/required).
    pub const S: u64 = 1 << 56;
    /// AR: action required: the error was consumed by the instruction at
    /// the restart IP, and software must act before resuming it.
    pub const AR: u64 = 1 << 55;
    /// MCA error code 0x00C0: memory controller error, "memory scrubbing"
    /// (0000 0000 1MMM CCCC with MMM=100 scrub, CCCC=0000 channel 0): what
    /// the patrol scrubber reports (SDM: SRAO example).
    pub const CODE_MEMORY_SCRUB: u64 = 0x00c0;
    /// MCA error code 0x0134: cache hierarchy error, data read (RRRR=0011
    /// DRD), data (TT=01), level 0 (LL=00): a load consumed poison (SDM:
    /// SRAR "data load" example).
    pub const CODE_DATA_LOAD: u64 = 0x0134;
}

/// IA32_MCG_STATUS bits.
pub mod mcg {
    /// RIPV: the restart IP is valid: execution can resume.
    pub const RIPV: u64 = 1 << 0;
    /// EIPV: the error IP points at the instruction that caused the error.
    pub const EIPV: u64 = 1 << 1;
    /// MCIP: a machine check is in progress.
    pub const MCIP: u64 = 1 << 2;
}

/// IA32_MCi_MISC: bits 5:0 give the least significant valid bit of the
/// address (6: a 64-byte cache line), bits 8:6 the address mode (2:
/// physical address). Linux's `mce_usable_address()` requires physical mode
/// and an LSB no larger than the page shift; nfit records a badrange of
/// 1 << LSB bytes at the address rounded down to it.
pub mod misc {
    pub const ADDR_LSB_CACHELINE: u64 = 6;
    pub const ADDR_MODE_PHYS: u64 = 2 << 6;
    pub const PHYS_CACHELINE: u64 = ADDR_MODE_PHYS | ADDR_LSB_CACHELINE;
}

/// The bank QEMU's `mce` writes; Linux does not care which, and 9 is what
/// the lab's manual measurements used.
pub const BANK: u32 = 9;

/// The granularity of an injected error: one cache line (misc LSB 6).
pub const GRANULE: u64 = 1 << misc::ADDR_LSB_CACHELINE;

/// The kinds of error the lab emulates, named by what happens on real
/// hardware.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The patrol scrubber found an uncorrectable error in memory nobody is
    /// reading: SRAO (software recoverable, action optional). Linux logs it,
    /// nfit adds a badblock, memory_failure() handles the page.
    Scrub,
    /// A load consumed poisoned data: SRAR (action required). Delivered to
    /// the CPU running the consuming task, which gets SIGBUS BUS_MCEERR_AR.
    /// On an idle CPU it hits the kernel and the guest panics, so the lab
    /// only injects it while a consumer is reading (the `consume` step).
    Load,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Scrub => "scrub",
            Kind::Load => "load",
        }
    }

    /// IA32_MCi_STATUS for this kind.
    pub fn status(self) -> u64 {
        use status::*;
        let common = VAL | UC | EN | MISCV | ADDRV | S;
        match self {
            Kind::Scrub => common | CODE_MEMORY_SCRUB,
            Kind::Load => common | AR | CODE_DATA_LOAD,
        }
    }

    /// IA32_MCG_STATUS for this kind.
    pub fn mcg_status(self) -> u64 {
        match self {
            // The interrupted context can simply resume.
            Kind::Scrub => mcg::MCIP | mcg::RIPV,
            // The error IP is the load; the restart IP is valid too, as
            // recovery-capable Intel parts report an SRAR data load (see
            // `Consumer::mcg_status`).
            Kind::Load => mcg::MCIP | mcg::EIPV | mcg::RIPV,
        }
    }
}

/// Who loaded a poisoned line, as the poison model saw it when it stopped
/// the vCPU at the load (the stopped CPU's CS selector: RPL 3 is user mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumer {
    User,
    Kernel,
}

impl Consumer {
    pub fn name(self) -> &'static str {
        match self {
            Consumer::User => "user",
            Consumer::Kernel => "kernel",
        }
    }

    /// IA32_MCG_STATUS for a data load that consumed poison in this mode.
    ///
    /// Kernel: RIPV|EIPV|MCIP (0x7). Linux treats a kernel-mode #MC as
    /// recoverable only when both RIPV and EIPV are set
    /// (arch/x86/kernel/cpu/mce/severity.c, `mc_recoverable()`); only then
    /// does `error_context()` look up the exception-table fixup of the
    /// load (copy_mc_*, copy-from-user), and the "In kernel and no restart
    /// IP" rows need RIPV clear. Recovery-capable Intel parts report data
    /// load errors so; without RIPV no copy_mc path could ever recover,
    /// which is the opposite of what those fixups exist for. Measured here
    /// (../shared/design.md): 0x6 in copy_mc_enhanced_fast_string panics,
    /// 0x7 takes the fixup and the read gets EIO.
    ///
    /// User: the same, RIPV|EIPV|MCIP (0x7). Hardware sets RIPV for an
    /// SRAR data load (QEMU commit cb48748af7df, "Set MCG_STATUS_RIPV bit
    /// for mce SRAR error", made its KVM injection do the same for that
    /// reason), and the encoding decides the outcome on older kernels:
    /// without RIPV, do_machine_check() sets kill_current_task and 6.1
    /// queues kill_me_now(), a plain SIGBUS (si_code SI_KERNEL, no address)
    /// without memory_failure() (arch/x86/kernel/cpu/mce/core.c; measured:
    /// every lab consume on 6.1 got si_code 128 with 0x6). 6.12 picks
    /// kill_me_maybe() by mce_usable_address() instead and gets there
    /// either way. With RIPV: kill_me_maybe(), memory_failure() with
    /// MF_ACTION_REQUIRED, SIGBUS BUS_MCEERR_AR, on both.
    pub fn mcg_status(self) -> u64 {
        match self {
            Consumer::User | Consumer::Kernel => mcg::MCIP | mcg::EIPV | mcg::RIPV,
        }
    }
}

/// One injection, ready for QEMU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injection {
    pub kind: Kind,
    /// IA32_MCG_STATUS: the kind's, or the consumer's for a load the poison
    /// model caught.
    pub mcg_status: u64,
    /// vCPU that takes the machine check.
    pub cpu: u32,
    /// Guest-physical address.
    pub address: u64,
    /// Broadcast to all vCPUs (needed when the VM has more than one).
    pub broadcast: bool,
}

impl Injection {
    pub fn new(kind: Kind, address: u64, cpu: u32, cpus: u32) -> Self {
        Injection {
            kind,
            mcg_status: kind.mcg_status(),
            cpu,
            address,
            broadcast: cpus > 1,
        }
    }

    /// The data-load machine check for a load of poison by `consumer` on
    /// `cpu`, at the line's address.
    pub fn consumed(consumer: Consumer, address: u64, cpu: u32, cpus: u32) -> Self {
        Injection {
            mcg_status: consumer.mcg_status(),
            ..Injection::new(Kind::Load, address, cpu, cpus)
        }
    }

    /// The HMP command line.
    pub fn hmp_command(&self) -> String {
        format!(
            "mce {}{} {BANK} {:#x} {:#x} {:#x} {:#x}",
            if self.broadcast { "-b " } else { "" },
            self.cpu,
            self.kind.status(),
            self.mcg_status,
            self.address,
            misc::PHYS_CACHELINE
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_match_the_values_measured_by_hand() {
        // ../shared/design.md: SRAO 0xbd000000000000c0 / 0x5, SRAR
        // 0xbd80000000000134 (measured with 0x6; 0x7 is what hardware and
        // QEMU's KVM path report, see Consumer::mcg_status), misc 0x86.
        assert_eq!(Kind::Scrub.status(), 0xbd00_0000_0000_00c0);
        assert_eq!(Kind::Scrub.mcg_status(), 0x5);
        assert_eq!(Kind::Load.status(), 0xbd80_0000_0000_0134);
        assert_eq!(Kind::Load.mcg_status(), 0x7);
        assert_eq!(misc::PHYS_CACHELINE, 0x86);
    }

    #[test]
    fn recoverable_errors_never_claim_a_corrupt_context() {
        for k in [Kind::Scrub, Kind::Load] {
            assert_eq!(k.status() & status::PCC, 0);
            assert_eq!(k.status() & status::OVER, 0);
            assert_ne!(k.status() & status::S, 0);
        }
    }

    #[test]
    fn hmp_command_broadcasts_only_with_several_cpus() {
        let one = Injection::new(Kind::Scrub, 0x1_0020_0040, 0, 1);
        assert_eq!(
            one.hmp_command(),
            "mce 0 9 0xbd000000000000c0 0x5 0x100200040 0x86"
        );
        let two = Injection::new(Kind::Load, 0x1_0000_0000, 1, 2);
        assert_eq!(
            two.hmp_command(),
            "mce -b 1 9 0xbd80000000000134 0x7 0x100000000 0x86"
        );
    }

    #[test]
    fn every_consumer_gets_a_restart_ip() {
        let k = Injection::consumed(Consumer::Kernel, 0x1_0020_0040, 0, 1);
        assert_eq!(
            k.hmp_command(),
            "mce 0 9 0xbd80000000000134 0x7 0x100200040 0x86"
        );
        let u = Injection::consumed(Consumer::User, 0x1_0020_0040, 1, 2);
        assert_eq!(u, Injection::new(Kind::Load, 0x1_0020_0040, 1, 2));
        assert_ne!(u.mcg_status & mcg::RIPV, 0);
    }

    #[test]
    fn kinds_round_trip_by_name() {
        for k in [Kind::Scrub, Kind::Load] {
            let parsed: Kind = serde_saphyr::from_str(k.name()).unwrap();
            assert_eq!(parsed, k);
        }
        assert!(serde_saphyr::from_str::<Kind>("srao").is_err());
    }
}
