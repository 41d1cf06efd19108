//! KVM or TCG? Decided once per run by booting the lab kernel under KVM.
//!
//! /dev/kvm existing proves little: on nested or restricted hosts KVM aborts
//! on the first MSR write of `-cpu max` or stops with "KVM internal error".
//! So the probe boots the real kernel with the lab's CPU model and no initrd;
//! it must get as far as its "Kernel panic ... Unable to mount root fs", which
//! (with panic=-1 and -no-reboot) ends QEMU within a second or two.

use pmem_lab_env::qemu::Qemu;
use pmem_lab_env::vars;
use std::fs::OpenOptions;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// A bare boot of a kernel (and optionally an initramfs) with the lab's
/// CPU model and the serial console on stdout: the KVM probe and the
/// benchmark's boot-to-/init timing. The cases' machines are built by the
/// harness (harness/src/machine.rs); this one stays here to keep xtask free
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
        .args(["-cpu", "max,vendor=GenuineIntel", "-m", memory])
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

/// `("kvm" | "tcg", why)`.
/// The probe's console goes to `console_log` (kept for diagnosis).
pub fn detect(qemu: &Qemu, bzimage: &Path, console_log: &Path) -> (&'static str, String) {
    if let Some(forced) = vars::ACCEL.get_str() {
        return match forced.as_str() {
            "kvm" => ("kvm", "forced by PMEM_LAB_ACCEL".into()),
            _ => ("tcg", "forced by PMEM_LAB_ACCEL".into()),
        };
    }
    if OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return ("tcg", "no usable /dev/kvm".into());
    }
    match probe(qemu, bzimage, console_log) {
        Ok(t) => (
            "kvm",
            format!("KVM probe booted the kernel in {:.1}s", t.as_secs_f64()),
        ),
        Err(why) => ("tcg", format!("KVM is present but unusable: {why}")),
    }
}

fn probe(qemu: &Qemu, bzimage: &Path, console_log: &Path) -> Result<Duration, String> {
    let start = Instant::now();
    // A file, not a pipe: nobody reads while we wait, and a pipe could fill.
    let log = std::fs::File::create(console_log)
        .map_err(|e| format!("{}: {e}", console_log.display()))?;
    let mut child = bare_boot(qemu, "kvm", bzimage, None, "256M")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start QEMU: {e}"))?;
    loop {
        if child.try_wait().map_err(|e| e.to_string())?.is_some() {
            break;
        }
        if start.elapsed() > PROBE_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "the probe guest did not finish in {}s",
                PROBE_TIMEOUT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let console = std::fs::read_to_string(console_log).unwrap_or_default();
    if console.contains("Kernel panic") {
        return Ok(start.elapsed());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first = stderr
        .lines()
        .find(|l| !l.contains("warning:"))
        .unwrap_or("no kernel output");
    Err(first.trim().to_string())
}
