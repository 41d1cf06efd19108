//! `cargo xtask lab shell CASE`: boot a case's machine, run its setup, and
//! hand the user a shell on the guest's serial console.
//!
//! The shell runs in the guest as a session leader on ttyS0 (so Ctrl-C is a
//! SIGINT in the guest, not here: our terminal is in raw mode and passes the
//! byte through). When that shell exits, the VM is killed. Without a
//! terminal (a script pipes commands in), end of input sends Ctrl-D.

use crate::boot;
use crate::case::step::PutSpec;
use crate::case::Case;
use crate::guest::setup;
use crate::guest::{bring, Guest};
use crate::vm::lab_env::LabEnv;
use pmem_lab_env::put::PutArg;
use pmem_lab_proto::RunRequest;
use std::io::{IsTerminal, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

/// Restores the terminal's mode when dropped (also on error paths).
struct RawMode(Option<libc::termios>);

impl RawMode {
    fn enter() -> RawMode {
        if !std::io::stdin().is_terminal() {
            return RawMode(None);
        }
        // SAFETY: tcgetattr/tcsetattr on our own stdin with a termios we own.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return RawMode(None);
            }
            let saved = t;
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(0, libc::TCSANOW, &t);
            RawMode(Some(saved))
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            // SAFETY: restoring the mode we saved.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, t) };
        }
    }
}

/// Why the shell ended before the guest's shell did.
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    #[error("{}: {source}", path.display())]
    Host {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("boot: {0}")]
    Boot(#[from] crate::boot::BootError),
    #[error("setup: {0}")]
    Setup(#[from] crate::guest::GuestError),
    #[error(transparent)]
    Vm(#[from] crate::vm::VmError),
    #[error("the VM has no console input")]
    NoConsole,
}

pub fn run(case: &Case, env: &LabEnv, extras: &[PutArg]) -> Result<(), ShellError> {
    let dir = env.artifacts.join(&case.id).join("shell");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(host(&dir))?;
    eprintln!("pmem-lab shell: booting {} ({})", case.id, env.accel.name());
    let mut started = boot::start_machine(&case.machine, env, &dir, true, None)?;
    let hmp = started.files.hmp_socket.clone();
    started.wait_ready(case.boot_timeout)?;
    let boot::Started {
        mut guest,
        private: _private,
        ..
    } = started;
    let layout = setup::create_namespaces(&mut guest, case)?;
    eprintln!("pmem-lab shell: setup done:");
    for (name, ns) in &layout.namespaces {
        let dev = ns
            .chardev
            .as_ref()
            .or(ns.blockdev.as_ref())
            .map(|d| format!(" /dev/{d}"))
            .unwrap_or_default();
        eprintln!("  {name}: {} in {}{dev}", ns.dev, ns.region);
    }
    for extra in extras {
        put_extra(&mut guest, extra, env)?;
    }
    eprintln!(
        "pmem-lab shell: QEMU monitor: socat - UNIX-CONNECT:{} (e.g. `mce ...`, `info registers`)",
        hmp.display()
    );
    eprintln!(
        "pmem-lab shell: artifacts in {}; `exit` ends the VM\r",
        dir.display()
    );

    let console = guest.vm().console_input().ok_or(ShellError::NoConsole)?;
    let shell = guest.vm().send(pmem_lab_proto::Op::Run(RunRequest {
        argv: vec!["bash".into(), "-l".into()],
        env: [("PS1".to_string(), "pmem-lab# ".to_string())].into(),
        timeout_ms: u64::MAX / 4,
        tty: Some("/dev/ttyS0".into()),
        ..Default::default()
    }))?;
    let raw = RawMode::enter();
    forward_stdin(console, raw.0.is_some());
    let ended = guest
        .vm()
        .wait_reply(shell, Duration::from_secs(u64::MAX / 4));
    drop(raw);
    guest.kill();
    eprintln!("\npmem-lab shell: the guest shell ended; VM stopped");
    Ok(ended.map(|_| ())?)
}

/// A host file's error, for `map_err`.
fn host(path: &Path) -> impl FnOnce(std::io::Error) -> ShellError {
    let path = path.to_path_buf();
    move |source| ShellError::Host { path, source }
}

/// Put one `--put` file into the guest as a case's `put` step would (a C
/// source compiled in the sandbox first).
fn put_extra(guest: &mut Guest, extra: &PutArg, env: &LabEnv) -> Result<(), ShellError> {
    let source = extra.host.canonicalize().map_err(host(&extra.host))?;
    let folder = source.parent().unwrap_or(Path::new("/")).to_path_buf();
    let spec = PutSpec {
        folder,
        compile: extra.host.extension().is_some_and(|e| e == "c"),
        executable: std::fs::metadata(&extra.host)
            .is_ok_and(|m| m.permissions().mode() & 0o111 != 0),
        source,
        to: extra.guest.clone(),
    };
    bring::put(guest, &spec, &env.cache, Duration::from_secs(60))?;
    eprintln!("  put {} -> {}", extra.host.display(), extra.guest);
    Ok(())
}

/// Our stdin to the guest's console, on a thread of its own until either
/// ends; at the end of a script's input (not a terminal), Ctrl-D ends the
/// shell.
fn forward_stdin(mut console: impl Write + Send + 'static, interactive: bool) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        let mut stdin = std::io::stdin().lock();
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    if !interactive {
                        let _ = console.write_all(b"\x04");
                    }
                    break;
                }
                Ok(n) => {
                    if console
                        .write_all(&buf[..n])
                        .and_then(|_| console.flush())
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
}
