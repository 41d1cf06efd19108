//! KVM or TCG? Decided by booting the lab kernel under KVM, once per host
//! boot, QEMU and kernel: the verdict is remembered.
//!
//! /dev/kvm existing proves little: on nested or restricted hosts KVM aborts
//! on the first MSR write of `-cpu max`, stops with "KVM internal error", or
//! opens and then never runs the guest. So the probe boots the real kernel
//! with the lab's CPU model and no initrd; it must get as far as its "Kernel
//! panic ... Unable to mount root fs", which a working KVM reaches in about
//! a second. A probe whose guest prints nothing for [`SILENCE`] has failed:
//! a hung KVM would otherwise hold every run for a long timeout.
//!
//! The verdict is kept in `<cache>/accel/<key>`, the key made of what
//! decides it: the host's boot (its boot_id: a reboot, a new kernel module
//! or firmware setting), /dev/kvm's identity, the QEMU binary and the
//! kernel image (by file identity, [`crate::memo::identity`]) and the CPU
//! model. The probe runs in a thread beside the image step ([`Probe`]).

use crate::memo;
use crate::util::Key;
use pmem_lab_env::qemu::Qemu;
use pmem_lab_env::vars;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a probe guest may print nothing before the probe has failed.
const SILENCE: Duration = Duration::from_secs(3);
/// And how long it may take in all, printing or not.
const PROBE_LIMIT: Duration = Duration::from_secs(20);
/// The CPU model the probe and the cases use (harness/src/vm/machine.rs).
const CPU: &str = "max,vendor=GenuineIntel";

/// A bare boot of a kernel (and optionally an initramfs) with the lab's
/// CPU model and the serial console on stdout: the KVM probe and the
/// benchmark's boot-to-/init timing. The cases' machines are built by the
/// harness (harness/src/vm/machine.rs); this one stays here to keep xtask free
/// of the harness's dependencies.
pub fn bare_boot(
    qemu: &Qemu,
    accel: &str,
    kernel: &Path,
    initrd: Option<&Path>,
    memory: &str,
) -> Command {
    let mut cmd = qemu.command();
    cmd.arg("-machine")
        .arg(format!("pc,accel={accel}"))
        .args(["-cpu", CPU, "-m", memory])
        .args([
            "-nodefaults",
            "-nographic",
            "-no-reboot",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(kernel)
        .args(["-append", "console=ttyS0 panic=-1"]);
    if let Some(initrd) = initrd {
        cmd.arg("-initrd").arg(initrd);
    }
    cmd
}

/// The accelerator and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub accel: &'static str,
    pub why: String,
}

impl Verdict {
    fn new(accel: &'static str, why: impl Into<String>) -> Verdict {
        Verdict {
            accel,
            why: why.into(),
        }
    }

    fn line(&self) -> String {
        format!("{}\t{}", self.accel, self.why)
    }

    fn parse(line: &str) -> Option<Verdict> {
        let (accel, why) = line.trim_end().split_once('\t')?;
        let accel = match accel {
            "kvm" => "kvm",
            "tcg" => "tcg",
            _ => return None,
        };
        Some(Verdict::new(accel, why))
    }
}

/// A decision under way: the probe, if one is needed, runs in a thread.
pub struct Probe(ProbeState);

enum ProbeState {
    Known(Verdict),
    Running(std::thread::JoinHandle<Verdict>),
}

impl Probe {
    /// Start deciding for `qemu` and `bzimage`; the probe's console goes to
    /// `<cache>/kvm-probe.log` (kept for diagnosis).
    pub fn start(qemu: &Qemu, bzimage: &Path, cache: &Path) -> Probe {
        if let Some(forced) = vars::ACCEL.get_str() {
            let accel = if forced == "kvm" { "kvm" } else { "tcg" };
            return Probe(ProbeState::Known(Verdict::new(
                accel,
                "forced by PMEM_LAB_ACCEL",
            )));
        }
        if OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_err()
        {
            return Probe(ProbeState::Known(Verdict::new("tcg", "no usable /dev/kvm")));
        }
        let remembered = remembered_at(qemu, bzimage, cache);
        if let Some(v) = remembered
            .as_deref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|t| Verdict::parse(&t))
        {
            return Probe(ProbeState::Known(Verdict {
                why: format!(
                    "{}; remembered, `{}` probes again",
                    v.why,
                    forget_hint(cache)
                ),
                ..v
            }));
        }
        let (qemu, bzimage, log) = (
            qemu.clone(),
            bzimage.to_path_buf(),
            cache.join("kvm-probe.log"),
        );
        Probe(ProbeState::Running(std::thread::spawn(move || {
            let v = match probe(&qemu, &bzimage, &log) {
                Ok(t) => Verdict::new(
                    "kvm",
                    format!("KVM probe booted the kernel in {:.1}s", t.as_secs_f64()),
                ),
                Err(why) => Verdict::new("tcg", format!("KVM is present but unusable: {why}")),
            };
            if let Some(path) = remembered {
                // A cache that cannot be written only costs the next run a probe.
                let _ = crate::util::write_atomic(&path, v.line());
            }
            v
        })))
    }

    /// The verdict (waits for the probe).
    pub fn verdict(self) -> Verdict {
        match self.0 {
            ProbeState::Known(v) => v,
            ProbeState::Running(h) => h.join().unwrap_or_else(|_| {
                Verdict::new(
                    "tcg",
                    "the KVM probe panicked (a lab bug; please report it)",
                )
            }),
        }
    }
}

/// Where the verdict for this host boot, /dev/kvm, QEMU and kernel is kept;
/// None when one of them cannot be identified (then nothing is remembered).
fn remembered_at(qemu: &Qemu, bzimage: &Path, cache: &Path) -> Option<PathBuf> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let mut key = Key::new("accel-verdict-1");
    key.str("boot", boot.trim())
        .str("kvm", &memo::identity(Path::new("/dev/kvm"))?)
        .str("qemu", &qemu.binary.display().to_string())
        .str("qemu-id", &memo::identity(&qemu.binary)?)
        .str("kernel-id", &memo::identity(bzimage)?)
        .str("cpu", CPU);
    for d in qemu.libraries.iter().chain(&qemu.firmware) {
        key.str("dir", &d.display().to_string());
    }
    Some(cache.join("accel").join(key.finish()))
}

fn forget_hint(cache: &Path) -> String {
    format!("rm -r {}", cache.join("accel").display())
}

/// Why the probe guest did not reach its panic under KVM.
enum Unusable {
    /// The probe could not run at all (its log, QEMU's start or wait).
    Host(String, std::io::Error),
    /// It ran and stopped short: why (silence, the time limit).
    Stopped(String),
    /// QEMU ended first: the first line of its stderr that is no warning.
    Qemu(String),
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unusable::Host(what, e) => write!(f, "{what}: {e}"),
            Unusable::Stopped(why) | Unusable::Qemu(why) => f.write_str(why),
        }
    }
}

fn probe(qemu: &Qemu, bzimage: &Path, console_log: &Path) -> Result<Duration, Unusable> {
    let start = Instant::now();
    let host = |what: &str| {
        let what = what.to_string();
        move |e| Unusable::Host(what, e)
    };
    // A file, not a pipe: nobody reads while we wait, and a pipe could fill.
    let log =
        std::fs::File::create(console_log).map_err(host(&console_log.display().to_string()))?;
    let mut child = bare_boot(qemu, "kvm", bzimage, None, "256M")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(host("cannot start QEMU"))?;
    let (mut printed, mut last_output) = (0, Instant::now());
    let stopped = loop {
        if child
            .try_wait()
            .map_err(host("waiting for QEMU"))?
            .is_some()
        {
            break None;
        }
        let console = std::fs::read_to_string(console_log).unwrap_or_default();
        if console.contains("Kernel panic") {
            // Where it had to get: no need to wait for QEMU to exit.
            let _ = child.kill();
            let _ = child.wait();
            return Ok(start.elapsed());
        }
        if console.len() != printed {
            (printed, last_output) = (console.len(), Instant::now());
        }
        if last_output.elapsed() > SILENCE {
            break Some(format!(
                "the probe guest printed nothing for {}s{}",
                SILENCE.as_secs(),
                if printed == 0 {
                    ""
                } else {
                    " (it had started)"
                }
            ));
        }
        if start.elapsed() > PROBE_LIMIT {
            break Some(format!(
                "the probe guest did not reach its panic in {}s",
                PROBE_LIMIT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if let Some(why) = stopped {
        let _ = child.kill();
        let _ = child.wait();
        return Err(Unusable::Stopped(why));
    }
    let out = child.wait_with_output().map_err(host("waiting for QEMU"))?;
    let console = std::fs::read_to_string(console_log).unwrap_or_default();
    if console.contains("Kernel panic") {
        return Ok(start.elapsed());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first = stderr
        .lines()
        .find(|l| !l.contains("warning:"))
        .unwrap_or("no kernel output");
    Err(Unusable::Qemu(first.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verdict_is_kept_as_one_line() {
        let v = Verdict::new(
            "tcg",
            "KVM is present but unusable: failed to set MSR 0x10a",
        );
        assert_eq!(Verdict::parse(&v.line()), Some(v));
        assert_eq!(
            Verdict::parse("kvm\tbooted"),
            Some(Verdict::new("kvm", "booted"))
        );
        assert_eq!(Verdict::parse("hvf\tx"), None);
        assert_eq!(Verdict::parse(""), None);
    }
}
