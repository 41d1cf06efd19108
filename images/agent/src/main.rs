//! pmem-lab guest agent: started by the initramfs init, it serves the lab's
//! requests over the virtio-serial port named [`PORT_NAME`].
//!
//! Each request runs on its own thread so that a long operation never blocks
//! the channel; all writes go through one mutex so lines never interleave.

use pmem_lab_proto::{
    FileRead, GuestMessage, KmsgRecord, Op, Reply, Request, RunRequest, RunResult, PORT_NAME,
    PROTOCOL_VERSION,
};
mod dax;
mod error;

use error::{io, AgentError};

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

type Out = Arc<Mutex<File>>;

fn main() -> ExitCode {
    match serve() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // stderr is the kernel console: the lab shows it with the failure.
            eprintln!("pmem-lab-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve() -> Result<(), AgentError> {
    dax::init()?;
    let dev = find_port()?;
    let port = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&dev)
        .map_err(io(format!("open {}", dev.display())))?;
    let reader = port.try_clone().map_err(io("dup the port"))?;
    let out: Out = Arc::new(Mutex::new(port));
    send(
        &out,
        &GuestMessage::Ready {
            protocol: PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            kernel_release: fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            uptime_ms: uptime_ms(),
        },
    );
    let mut lines = BufReader::new(reader);
    let mut line = String::new();
    loop {
        line.clear();
        match lines.read_line(&mut line) {
            // A virtio port reads EOF while the host side is disconnected;
            // the lab may reconnect, so wait rather than exit.
            Ok(0) => thread::sleep(Duration::from_millis(50)),
            Ok(_) => handle_line(&out, line.trim()),
            Err(e) => return Err(io(format!("read {}", dev.display()))(e)),
        }
    }
}

fn handle_line(out: &Out, line: &str) {
    if line.is_empty() {
        return;
    }
    let req: Request = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pmem-lab-agent: bad request {line:?}: {e}");
            return;
        }
    };
    // PR_MCE_KILL is per thread, and memory_failure() signals the thread
    // that set it: only the long-lived main thread (this one) can hold it.
    if let Op::MceKill { policy } = &req.op {
        let reply = match dax::mce_kill(policy) {
            Ok(()) => Reply::Done,
            Err(e) => Reply::Error {
                message: e.to_string(),
            },
        };
        return send(out, &GuestMessage::Response { id: req.id, reply });
    }
    let out = Arc::clone(out);
    thread::spawn(move || {
        // The one place an agent error becomes the protocol's text.
        let reply = serve_op(req.op).unwrap_or_else(|e| Reply::Error {
            message: e.to_string(),
        });
        send(&out, &GuestMessage::Response { id: req.id, reply });
    });
}

fn serve_op(op: Op) -> Result<Reply, AgentError> {
    Ok(match op {
        Op::Run(run_req) => Reply::Run(run(&run_req)?),
        Op::ReadFiles { paths } => Reply::Files {
            files: paths.iter().map(|p| read_file(p)).collect(),
        },
        Op::PageFlags { pfns } => Reply::PageFlags {
            flags: page_flags(&pfns)?,
        },
        Op::WriteFile { path, contents } => {
            OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|mut f| f.write_all(contents.as_bytes()))
                .map_err(io(format!("write {path}")))?;
            Reply::Done
        }
        Op::PutFile {
            path,
            contents,
            executable,
        } => {
            put_checked(&path, &contents, executable)?;
            Reply::Done
        }
        Op::Kmsg { after } => Reply::Kmsg {
            records: kmsg(after)?,
        },
        Op::Map {
            name,
            path,
            offset,
            length,
        } => Reply::Mapped {
            address: dax::map(&name, &path, offset, length)?,
        },
        Op::Unmap { name } => {
            dax::unmap(&name)?;
            Reply::Done
        }
        Op::Touch {
            name,
            offset,
            length,
            cpu,
        } => {
            let (pages, faults) = dax::touch(&name, offset, length, cpu)?;
            Reply::Touched { pages, faults }
        }
        Op::Consume {
            name,
            offset,
            cpu,
            timeout_ms,
        } => {
            let action = dax::child_action_read(&name, offset)?;
            consumed(dax::in_child(
                action,
                cpu,
                Duration::from_millis(timeout_ms),
                || {},
            )?)
        }
        Op::Poison { name, offset, cpu } => {
            let action = dax::child_action_poison(&name, offset)?;
            consumed(dax::in_child(action, cpu, Duration::from_secs(30), || {})?)
        }
        Op::Signals { wait_ms } => Reply::Signals {
            signals: dax::signals(Duration::from_millis(wait_ms)),
        },
        Op::MceKill { .. } => unreachable!("served on the main thread"),
        Op::Fiemap { path } => Reply::Extents {
            extents: fiemap(&path)?,
        },
    })
}

/// The kernel's flags of each page frame (None past the last).
fn page_flags(pfns: &[u64]) -> Result<Vec<Option<u64>>, AgentError> {
    use std::os::unix::fs::FileExt;
    let f = File::open("/proc/kpageflags").map_err(io("/proc/kpageflags"))?;
    let mut flags = Vec::with_capacity(pfns.len());
    for &pfn in pfns {
        let mut b = [0u8; 8];
        match f.read_exact_at(&mut b, pfn * 8) {
            Ok(()) => flags.push(Some(u64::from_le_bytes(b))),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => flags.push(None),
            Err(e) => return Err(io(format!("/proc/kpageflags at pfn {pfn:#x}"))(e)),
        }
    }
    Ok(flags)
}

/// Put a file the host sends. The loader and the shell check the same
/// rule; a host that skipped them still cannot replace the agent or write
/// sysfs.
fn put_checked(path: &str, contents: &[u8], executable: bool) -> Result<(), AgentError> {
    if let Some(why) = pmem_lab_proto::guest_path_problem(path) {
        return Err(AgentError::Refused(format!("put: {why}")));
    }
    if contents.len() as u64 > pmem_lab_proto::MAX_PUT_BYTES {
        return Err(AgentError::Refused(format!(
            "put {path}: {} bytes; at most {}",
            contents.len(),
            pmem_lab_proto::MAX_PUT_BYTES
        )));
    }
    put_file(path, contents, executable).map_err(io(format!("put {path}")))
}

/// A consuming child's end: its signal, if any, and how long it ran.
fn consumed((signal, took): (Option<pmem_lab_proto::SignalInfo>, Duration)) -> Reply {
    Reply::Consumed {
        signal,
        duration_ms: took.as_millis() as u64,
    }
}

fn send(out: &Out, msg: &GuestMessage) {
    let mut line = serde_json::to_string(msg).expect("protocol types serialize");
    line.push('\n');
    let mut port = out.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(e) = port.write_all(line.as_bytes()) {
        eprintln!("pmem-lab-agent: write: {e}");
    }
}

/// The port's /dev node, found by name: without udev there are no
/// /dev/virtio-ports/NAME symlinks.
fn find_port() -> Result<PathBuf, AgentError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(entries) = fs::read_dir("/sys/class/virtio-ports") {
            for entry in entries.flatten() {
                let name = fs::read_to_string(entry.path().join("name")).unwrap_or_default();
                if name.trim() == PORT_NAME {
                    return Ok(PathBuf::from("/dev").join(entry.file_name()));
                }
            }
        }
        if Instant::now() > deadline {
            return Err(AgentError::Refused(format!(
                "no virtio-serial port named {PORT_NAME} (is virtio_console built in?)"
            )));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn uptime_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

fn run(req: &RunRequest) -> Result<RunResult, AgentError> {
    let (program, args) = req
        .argv
        .split_first()
        .ok_or_else(|| AgentError::Refused("empty argv".into()))?;
    let start = Instant::now();
    let mut cmd = Command::new(program);
    cmd.args(args).envs(&req.env);
    if let Some(tty) = &req.tty {
        let open = || OpenOptions::new().read(true).write(true).open(tty);
        let t = open().map_err(io(format!("open {tty}")))?;
        cmd.stdin(t.try_clone().map_err(io(format!("dup {tty}")))?)
            .stdout(t.try_clone().map_err(io(format!("dup {tty}")))?)
            .stderr(t);
        // SAFETY: setsid and ioctl are async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 1) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    } else {
        cmd.stdin(if req.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills the program's children too.
        .process_group(0);
    }
    let mut child = cmd.spawn().map_err(io(format!("spawn {program}")))?;
    if let (Some(input), Some(mut stdin)) = (req.stdin.clone(), child.stdin.take()) {
        thread::spawn(move || {
            let _ = stdin.write_all(input.as_bytes());
        });
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let mut timed_out = false;
    let status = match rx.recv_timeout(Duration::from_millis(req.timeout_ms)) {
        Ok(status) => status,
        Err(_) => {
            timed_out = true;
            // SAFETY: plain syscall on the process group we created.
            unsafe { libc::killpg(pid, libc::SIGKILL) };
            rx.recv()
                .map_err(|_| AgentError::Refused(format!("{program}: its waiter is gone")))?
        }
    }
    .map_err(io(format!("wait {program}")))?;
    use std::os::unix::process::ExitStatusExt;
    Ok(RunResult {
        exit_code: status.code(),
        signal: status.signal(),
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
        timed_out,
        duration_ms: start.elapsed().as_millis() as u64,
    })
}

fn read_file(path: &str) -> FileRead {
    match fs::read(path) {
        Ok(bytes) => FileRead::Text {
            text: String::from_utf8_lossy(&bytes).into_owned(),
        },
        Err(e) => FileRead::Error {
            message: e.to_string(),
        },
    }
}

/// Every record in the kernel's log buffer with a sequence number above
/// `after`. /dev/kmsg hands out one record per read(); a non-blocking read
/// past the last one fails with EAGAIN, and EPIPE means records were
/// overwritten before we read them (we skip ahead, the lab sees the gap in
/// the sequence numbers).
fn kmsg(after: Option<u64>) -> Result<Vec<KmsgRecord>, AgentError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
        .map_err(io("open /dev/kmsg"))?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                if let Some(r) = KmsgRecord::parse(&text) {
                    if after.is_none_or(|a| r.seq > a) {
                        out.push(r);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) => return Err(io("read /dev/kmsg")(e)),
        }
    }
    Ok(out)
}

/// FS_IOC_FIEMAP with room for 64 extents; the lab's test files are small.
fn fiemap(path: &str) -> Result<Vec<pmem_lab_proto::Extent>, AgentError> {
    use std::os::fd::AsRawFd;
    const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
    const FIEMAP_FLAG_SYNC: u64 = 1;
    const EXTENTS: usize = 64;
    // struct fiemap as u64 words: fm_start, fm_length, fm_flags |
    // fm_mapped_extents << 32, fm_extent_count | fm_reserved << 32; then
    // 7 words per struct fiemap_extent (logical, physical, length, ...).
    let mut buf = vec![0u64; 4 + 7 * EXTENTS];
    buf[1] = u64::MAX;
    buf[2] = FIEMAP_FLAG_SYNC;
    buf[3] = EXTENTS as u64;
    let f = File::open(path).map_err(io(format!("open {path}")))?;
    // SAFETY: the ioctl fills the buffer sized for EXTENTS extents.
    if unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_FIEMAP, buf.as_mut_ptr()) } != 0 {
        return Err(AgentError::Refused(format!(
            "FIEMAP {path}: {}",
            std::io::Error::last_os_error()
        )));
    }
    let mapped = ((buf[2] >> 32) as usize).min(EXTENTS);
    Ok((0..mapped)
        .map(|i| {
            let at = 4 + 7 * i;
            pmem_lab_proto::Extent {
                logical: buf[at],
                physical: buf[at + 1],
                length: buf[at + 2],
            }
        })
        .collect())
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Write a whole file: into a temporary name beside it, then renamed, so a
/// program never runs a half-written copy.
fn put_file(path: &str, contents: &[u8], executable: bool) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::path::Path::new(path);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("pmem-lab-part");
    std::fs::write(&tmp, contents)?;
    let mode = if executable { 0o755 } else { 0o644 };
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path)
}
