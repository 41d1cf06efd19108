//! One QEMU process and everything attached to it: the serial console (read
//! live from QEMU's stdout), QEMU's stderr, the QMP monitor and the guest
//! agent's socket.
//!
//! Lifetime rules, because a stray VM eats a core for hours under TCG:
//! - QEMU runs in its own process group and is killed (SIGKILL to the group)
//!   when the [`Vm`] is dropped, whatever the case's outcome;
//! - QEMU also gets `PR_SET_PDEATHSIG = SIGKILL`, so if the runner dies
//!   without unwinding (Ctrl-C, a test runner's timeout kill, a crash) the
//!   kernel kills QEMU for us.
//!
//! Every source of news (console, QEMU exit, agent, QMP) feeds one channel,
//! so a wait can end at once on whichever comes first: the awaited reply, a
//! kernel panic on the console, or QEMU dying. QMP events are kept in order
//! ([`Vm::qmp_events`]) whoever was waiting when they came.

pub mod gdb;
pub mod lab_env;
pub mod launch;
pub mod machine;
pub mod poison;
pub mod qmp;

use machine::VmFiles;
use pmem_lab_env::qemu::Qemu;
use pmem_lab_proto::{GuestMessage, Reply, Request, PROTOCOL_VERSION};
use serde_json::{json, Value};
use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Console lines that mean the guest kernel is gone.
const PANIC_MARKERS: [&str; 2] = ["Kernel panic - not syncing", "---[ end Kernel panic"];
/// Console lines of a kernel Oops: the guest lives on, but the task that hit
/// it is dead (often the agent, holding locks), so waiting for its reply
/// would only end in a timeout. An Oops fails the case at once too.
const OOPS_MARKERS: [&str; 2] = ["Oops: ", "BUG: kernel NULL pointer dereference"];

/// What the reader threads report.
pub enum Event {
    Agent(GuestMessage),
    AgentClosed,
    Qmp(qmp::Message),
    Panic,
    QemuExited(ExitStatus),
}

/// Why a wait on the VM ended without what it waited for.
#[derive(Debug)]
pub enum VmError {
    Panic {
        console: String,
    },
    QemuExited {
        status: String,
        stderr: String,
        console: String,
    },
    AgentClosed {
        console: String,
    },
    Timeout {
        what: String,
        after: Duration,
        console: String,
    },
    Protocol(String),
    /// QEMU refused a monitor command.
    Qmp(String),
    /// QMP's handshake failed.
    Handshake(qmp::QmpError),
    /// QEMU's binary did not start.
    Spawn {
        binary: PathBuf,
        source: std::io::Error,
    },
    /// A host file of a VM: its private dir, a backing file, a log, a
    /// snapshot's copy.
    File {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl VmError {
    /// What kind of failure this is, without the details that change from
    /// run to run: `cargo xtask bisect` compares these.
    pub fn class(&self) -> String {
        match self {
            VmError::Panic { .. } => "guest panic".into(),
            VmError::QemuExited { .. } => "QEMU exited".into(),
            VmError::AgentClosed { .. } => "the agent closed its channel".into(),
            VmError::Timeout { what, .. } => format!("timeout waiting for {what}"),
            VmError::Protocol(_) => "agent protocol".into(),
            VmError::Qmp(_) => "QEMU monitor refused".into(),
            VmError::Handshake(_) => "QMP handshake".into(),
            VmError::Spawn { .. } => "QEMU did not start".into(),
            VmError::File { .. } => "a VM's host file".into(),
        }
    }

    /// A host file's error, for `map_err`.
    pub fn file(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> VmError {
        let path = path.into();
        move |source| VmError::File { path, source }
    }
}

impl std::error::Error for VmError {}

impl std::fmt::Display for VmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmError::Panic { console } => write!(f, "guest kernel panicked or oopsed:\n{console}"),
            VmError::QemuExited {
                status,
                stderr,
                console,
            } => write!(
                f,
                "QEMU exited ({status}).\nQEMU stderr:\n{}\nlast console lines:\n{console}",
                if stderr.trim().is_empty() {
                    "(empty)"
                } else {
                    stderr.trim_end()
                }
            ),
            VmError::AgentClosed { console } => {
                write!(
                    f,
                    "the guest agent closed its channel; last console lines:\n{console}"
                )
            }
            VmError::Timeout {
                what,
                after,
                console,
            } => write!(
                f,
                "timed out after {:.1}s waiting for {what}; last console lines:\n{console}",
                after.as_secs_f64()
            ),
            VmError::Protocol(m) => write!(f, "agent protocol error: {m}"),
            VmError::Qmp(m) => write!(f, "QEMU monitor: {m}"),
            VmError::Handshake(e) => write!(f, "{e}"),
            VmError::Spawn { binary, source } => write!(
                f,
                "cannot start {}: {source} (run `cargo xtask deps`)",
                binary.display()
            ),
            VmError::File { path, source } => write!(f, "{}: {source}", path.display()),
        }
    }
}

/// What the agent said when it came up.
#[derive(Debug, Clone)]
pub struct Ready {
    pub kernel_release: String,
    /// From QEMU start to the agent's ready message.
    pub boot_time: Duration,
    /// Guest CLOCK_BOOTTIME at ready.
    pub guest_uptime: Duration,
    /// Where a restored start's time went (QMP up, agent socket, state
    /// loaded, guest resumed and answering), for steps.log; empty for a boot.
    pub phases: String,
}

pub struct Vm {
    pid: i32,
    exited: Arc<AtomicBool>,
    events: Receiver<Event>,
    console: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    agent: Option<UnixStream>,
    agent_socket: PathBuf,
    qmp: Option<UnixStream>,
    qmp_socket: PathBuf,
    qmp_events: Vec<Value>,
    qmp_log: File,
    /// QEMU's stdin, i.e. the serial console's input (interactive VMs).
    console_in: Option<std::process::ChildStdin>,
    /// Replies that arrived while the lab waited for something else.
    unclaimed: Vec<Event>,
    started: Instant,
    next_id: u64,
    transcript: File,
    tx: Sender<Event>,
    /// The console text of a panic this VM has seen.
    panicked: Option<String>,
}

/// What QEMU's child process does between fork and exec: take the
/// snapshot's state at INCOMING_FD (a restore) and die with the lab.
fn in_child(cmd: &mut Command, incoming_fd: Option<std::os::fd::RawFd>) {
    let parent = std::process::id() as i32;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // After stdio is set up (std's order), so fd 3 is free to
            // take; dup2 leaves the copy without close-on-exec.
            if let Some(fd) = incoming_fd {
                let r = if fd == INCOMING_FD {
                    libc::fcntl(fd, libc::F_SETFD, 0)
                } else {
                    libc::dup2(fd, INCOMING_FD)
                };
                if r < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// QEMU's stderr, read whole into `into` (its error when it exits early).
fn collect(mut pipe: std::process::ChildStderr, into: Arc<Mutex<String>>) {
    thread::spawn(move || {
        let mut buf = String::new();
        let _ = pipe.read_to_string(&mut buf);
        into.lock().unwrap().push_str(&buf);
    });
}

/// Wait for QEMU to exit: set `exited` and send its status.
fn watch_exit(mut child: std::process::Child, exited: Arc<AtomicBool>, tx: Sender<Event>) {
    thread::spawn(move || {
        let status = child.wait();
        exited.store(true, Ordering::SeqCst);
        if let Ok(status) = status {
            let _ = tx.send(Event::QemuExited(status));
        }
    });
}

impl Vm {
    /// Start QEMU. `run_dir` receives console.log, agent.jsonl and qmp.log.
    /// With `interactive`, the serial console is also echoed to our stdout
    /// and [`Vm::console_input`] feeds it (the shell).
    pub fn start_with(
        qemu: &Qemu,
        args: &[OsString],
        files: &VmFiles,
        run_dir: &Path,
        interactive: bool,
    ) -> Result<Vm, VmError> {
        let mut cmd = qemu.command();
        cmd.args(args)
            .stdin(if interactive {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // A restore reads the snapshot's state from INCOMING_FD.
        let incoming = files
            .incoming
            .as_ref()
            .map(|p| File::open(p).map_err(VmError::file(p)))
            .transpose()?;
        in_child(&mut cmd, incoming.as_ref().map(|f| f.as_raw_fd()));
        let mut child = cmd.spawn().map_err(|source| VmError::Spawn {
            binary: qemu.binary.clone(),
            source,
        })?;
        let started = Instant::now();
        let pid = child.id() as i32;
        let (tx, events) = mpsc::channel();
        let console = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let exited = Arc::new(AtomicBool::new(false));

        let create = |name: &str| {
            let path = run_dir.join(name);
            File::create(&path).map_err(VmError::file(path))
        };
        let log = create("console.log")?;
        let stdout = child.stdout.take().expect("piped");
        spawn_console_reader(stdout, log, Arc::clone(&console), tx.clone(), interactive);
        let console_in = child.stdin.take();
        collect(child.stderr.take().expect("piped"), Arc::clone(&stderr));
        watch_exit(child, Arc::clone(&exited), tx.clone());
        let transcript = create("agent.jsonl")?;
        Ok(Vm {
            pid,
            exited,
            events,
            console,
            stderr,
            agent: None,
            agent_socket: files.agent_socket.clone(),
            qmp: None,
            qmp_socket: files.qmp_socket.clone(),
            qmp_events: Vec::new(),
            console_in,
            unclaimed: Vec::new(),
            qmp_log: create("qmp.log")?,
            started,
            next_id: 1,
            transcript,
            tx,
            panicked: None,
        })
    }

    /// Connect to QMP and to the agent, and wait for the agent's ready
    /// message.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<Ready, VmError> {
        let deadline = self.started + timeout;
        self.connect_qmp(deadline)?;
        self.connect_agent(deadline)?;
        let msg = self.wait_for("the guest agent to start", deadline, |e| match e {
            Event::Agent(m @ GuestMessage::Ready { .. }) => Some(m.clone()),
            _ => None,
        })?;
        let GuestMessage::Ready {
            protocol,
            kernel_release,
            uptime_ms,
            ..
        } = msg
        else {
            unreachable!()
        };
        if protocol != PROTOCOL_VERSION {
            return Err(VmError::Protocol(format!(
                "the guest agent speaks protocol {protocol}, the lab {PROTOCOL_VERSION}: \
                 the initramfs is stale, rebuild it with `cargo xtask image`"
            )));
        }
        Ok(Ready {
            kernel_release,
            boot_time: self.started.elapsed(),
            guest_uptime: Duration::from_millis(uptime_ms),
            phases: String::new(),
        })
    }

    fn connect_qmp(&mut self, deadline: Instant) -> Result<(), VmError> {
        let mut qmp_stream = self.connect(&self.qmp_socket.clone(), "the QMP socket", deadline)?;
        let reader =
            qmp::handshake(&mut qmp_stream, Duration::from_secs(10)).map_err(VmError::Handshake)?;
        spawn_qmp_reader(reader, self.tx.clone());
        self.qmp = Some(qmp_stream);
        Ok(())
    }

    fn connect_agent(&mut self, deadline: Instant) -> Result<(), VmError> {
        let agent = self.connect(&self.agent_socket.clone(), "the agent socket", deadline)?;
        let reader = agent
            .try_clone()
            .map_err(|e| VmError::Protocol(e.to_string()))?;
        spawn_agent_reader(reader, self.tx.clone());
        self.agent = Some(agent);
        Ok(())
    }

    /// A VM started with [`VmFiles::incoming`]: load the snapshot's state
    /// (`migrate-incoming` from [`INCOMING_FD`], the NVDIMM and CXL memory
    /// coming from the backing files, see [`MIGRATION_CAPABILITIES`]) and
    /// run the guest again, where setup left it: the restored counterpart
    /// of [`Vm::wait_ready`]'s wait. Who the guest is, the layer above asks
    /// the agent (this layer carries requests, it does not choose them).
    /// Returns where the time went, for [`Ready::phases`].
    pub fn load_snapshot(&mut self, timeout: Duration) -> Result<Vec<String>, VmError> {
        let deadline = self.started + timeout;
        let mut phases = Vec::new();
        let mut mark = |what: &str, since: &mut Instant| {
            phases.push(format!("{what} {} ms", since.elapsed().as_millis()));
            *since = Instant::now();
        };
        let mut since = self.started;
        self.connect_qmp(deadline)?;
        mark("QEMU up", &mut since);
        // The agent's socket before the state: then the guest's port comes
        // back connected, and the agent, blocked in its read when the
        // snapshot was taken, never sees the host go away.
        self.connect_agent(deadline)?;
        let left = || deadline.saturating_duration_since(Instant::now());
        self.qmp("migrate-set-capabilities", Some(capabilities()), left())?;
        let uri = format!("fd:{INCOMING_FD}");
        self.qmp("migrate-incoming", Some(json!({ "uri": uri })), left())?;
        // The snapshot was taken of a stopped guest, so QEMU keeps it
        // stopped after loading it.
        self.wait_migration("the snapshot to load", deadline)?;
        mark("state loaded", &mut since);
        self.resume(left())?;
        Ok(phases)
    }

    /// The console text of the guest kernel's panic, if a wait has seen one
    /// (a failure on the way is then that panic: [`VmError::Panic`]).
    pub fn panicked(&self) -> Option<&str> {
        self.panicked.as_deref()
    }

    /// When QEMU was started (a start's timeouts count from here).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Stop the guest and write its state to `to` (QEMU streams it to a
    /// socket at `socket`, which the lab copies to the file: QEMU 7.2 has no
    /// `file:` migration). The guest stays stopped: [`Vm::resume`] runs it.
    /// Returns the bytes written.
    pub fn save_state(
        &mut self,
        to: &Path,
        socket: &Path,
        timeout: Duration,
    ) -> Result<u64, VmError> {
        let deadline = Instant::now() + timeout;
        let left = || deadline.saturating_duration_since(Instant::now());
        let io = |what: &str, e: std::io::Error| VmError::Protocol(format!("{what}: {e}"));
        self.qmp("migrate-set-capabilities", Some(capabilities()), left())?;
        self.qmp("stop", None, left())?;
        let _ = std::fs::remove_file(socket);
        let listener =
            UnixListener::bind(socket).map_err(|e| io(&socket.display().to_string(), e))?;
        let out = File::create(to).map_err(|e| io(&to.display().to_string(), e))?;
        let writer = thread::spawn(move || -> std::io::Result<u64> {
            let (mut stream, _) = listener.accept()?;
            let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
            let n = std::io::copy(&mut stream, &mut out)?;
            out.flush()?;
            Ok(n)
        });
        let uri = format!("unix:{}", socket.display());
        let started = self.qmp("migrate", Some(json!({ "uri": uri })), left());
        let status =
            started.and_then(|_| self.wait_migration("the VM's state to be saved", deadline));
        if status.is_err() {
            // Unblock the writer if QEMU never connected.
            let _ = UnixStream::connect(socket);
        }
        let written = writer
            .join()
            .map_err(|_| VmError::Protocol("the state writer panicked".into()))?;
        let _ = std::fs::remove_file(socket);
        status?;
        written.map_err(|e| io("writing the VM's state", e))
    }

    /// Poll until this QEMU's migration (out or in) has completed.
    fn wait_migration(&mut self, what: &str, deadline: Instant) -> Result<(), VmError> {
        let began = Instant::now();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self.qmp("query-migrate", None, left)?;
            match v["status"].as_str() {
                Some("completed") => return Ok(()),
                Some(s @ ("failed" | "cancelled")) => {
                    return Err(VmError::Qmp(format!("migration {s}: {}", v["error-desc"])))
                }
                _ if left.is_zero() => return Err(self.timeout_error(what.into(), began.elapsed())),
                _ => thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    /// Run a stopped guest again.
    pub fn resume(&mut self, timeout: Duration) -> Result<(), VmError> {
        self.qmp("cont", None, timeout).map(|_| ())
    }

    /// QEMU creates its sockets while it starts: retry until they exist.
    fn connect(
        &mut self,
        path: &Path,
        what: &str,
        deadline: Instant,
    ) -> Result<UnixStream, VmError> {
        loop {
            match UnixStream::connect(path) {
                Ok(s) => return Ok(s),
                Err(_) if Instant::now() < deadline => {
                    if let Some(e) = self.poll_failure()? {
                        return Err(e);
                    }
                    thread::sleep(Duration::from_millis(10));
                }
                Err(e) => {
                    return Err(self.timeout_error(format!("{what} ({e})"), self.started.elapsed()))
                }
            }
        }
    }

    /// Send one request and wait for its reply (or a panic, QEMU's death, or
    /// the timeout).
    pub fn request(&mut self, op: pmem_lab_proto::Op, timeout: Duration) -> Result<Reply, VmError> {
        let id = self.send(op)?;
        self.wait_reply(id, timeout)
    }

    /// Send the request and return its id at once; collect the reply later
    /// with [`Vm::wait_reply`]. For operations that must be under way while
    /// the lab acts on the VM (a reader waiting for a machine check).
    pub fn send(&mut self, op: pmem_lab_proto::Op) -> Result<u64, VmError> {
        let id = self.next_id();
        let mut line = serde_json::to_string(&Request { id, op }).expect("serializable");
        line.push('\n');
        let _ = self.transcript.write_all(format!("> {line}").as_bytes());
        let agent = self
            .agent
            .as_mut()
            .ok_or_else(|| VmError::Protocol("agent not connected".into()))?;
        agent
            .write_all(line.as_bytes())
            .map_err(|e| VmError::Protocol(format!("write to agent: {e}")))?;
        Ok(id)
    }

    /// The reply to request `id`.
    pub fn wait_reply(&mut self, id: u64, timeout: Duration) -> Result<Reply, VmError> {
        let deadline = Instant::now() + timeout;
        self.wait_for(
            &format!("the agent's reply to request {id}"),
            deadline,
            |e| match e {
                Event::Agent(GuestMessage::Response { id: rid, reply }) if *rid == id => {
                    Some(reply.clone())
                }
                _ => None,
            },
        )
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Run a QMP command; its `return` value, or the error QEMU gave.
    pub fn qmp(
        &mut self,
        execute: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, VmError> {
        let id = self.next_id();
        self.qmp_send(&qmp::command(execute, arguments, id))?;
        self.qmp_reply(id, execute, timeout)
    }

    /// Run an HMP command (e.g. `mce ...`) through QMP; its text output.
    /// HMP reports most errors as text, so a non-empty answer to a command
    /// that prints nothing on success is the caller's to judge.
    pub fn hmp(&mut self, command_line: &str, timeout: Duration) -> Result<String, VmError> {
        self.hmp_on(command_line, None, timeout)
    }

    /// [`Vm::hmp`] with the monitor's current CPU set to `cpu`.
    pub fn hmp_on(
        &mut self,
        command_line: &str,
        cpu: Option<u32>,
        timeout: Duration,
    ) -> Result<String, VmError> {
        let id = self.next_id();
        self.qmp_send(&qmp::hmp(command_line, cpu, id))?;
        let v = self.qmp_reply(id, command_line, timeout)?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    fn qmp_send(&mut self, line: &str) -> Result<(), VmError> {
        let _ = write!(self.qmp_log, "> {line}");
        let stream = self
            .qmp
            .as_mut()
            .ok_or_else(|| VmError::Qmp("not connected".into()))?;
        stream
            .write_all(line.as_bytes())
            .map_err(|e| VmError::Qmp(format!("write: {e}")))
    }

    fn qmp_reply(&mut self, id: u64, what: &str, timeout: Duration) -> Result<Value, VmError> {
        let deadline = Instant::now() + timeout;
        let reply = self.wait_for(
            &format!("QEMU's reply to `{what}`"),
            deadline,
            |e| match e {
                Event::Qmp(
                    m @ (qmp::Message::Return { id: Some(i), .. }
                    | qmp::Message::Error { id: Some(i), .. }),
                ) if *i == id => Some(m.clone()),
                _ => None,
            },
        )?;
        match reply {
            qmp::Message::Return { value, .. } => Ok(value),
            qmp::Message::Error { class, desc, .. } => {
                Err(VmError::Qmp(format!("`{what}`: {class}: {desc}")))
            }
            _ => unreachable!(),
        }
    }

    /// Take the serial console's input (only for `start_with(.., true)`).
    pub fn console_input(&mut self) -> Option<std::process::ChildStdin> {
        self.console_in.take()
    }

    /// How many QMP events named `name` have arrived so far.
    pub fn qmp_event_count(&self, name: &str) -> usize {
        self.qmp_events
            .iter()
            .filter(|e| e["event"] == name)
            .count()
    }

    /// Every QMP event received so far, oldest first (the raw JSON).
    pub fn qmp_events(&self) -> &[Value] {
        &self.qmp_events
    }

    /// Wait until the `n`-th (0-based) QMP event named `name` has arrived.
    pub fn wait_qmp_event(
        &mut self,
        name: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<Value, VmError> {
        let count = |events: &[Value]| events.iter().filter(|e| e["event"] == name).count();
        if count(&self.qmp_events) > n {
            return Ok(self
                .qmp_events
                .iter()
                .filter(|e| e["event"] == name)
                .nth(n)
                .unwrap()
                .clone());
        }
        let deadline = Instant::now() + timeout;
        self.wait_for(&format!("QMP event {name}"), deadline, |e| match e {
            Event::Qmp(qmp::Message::Event { name: got, raw, .. }) if got == name => {
                Some(raw.clone())
            }
            _ => None,
        })?;
        // The event was recorded before `pick` saw it; return the n-th.
        self.qmp_events
            .iter()
            .filter(|e| e["event"] == name)
            .nth(n)
            .cloned()
            .ok_or_else(|| VmError::Qmp(format!("fewer than {} {name} events", n + 1)))
    }

    /// Wait for an event `pick` accepts. Agent messages and QMP events are
    /// logged (and QMP events kept) whether picked or not; anything fatal
    /// ends the wait with the failure. Replies nobody picked yet are kept for
    /// a later wait: while the lab waits for QEMU, the agent may already
    /// answer a request that is still in flight.
    pub fn wait_for<T>(
        &mut self,
        what: &str,
        deadline: Instant,
        mut pick: impl FnMut(&Event) -> Option<T>,
    ) -> Result<T, VmError> {
        let began = Instant::now();
        if let Some(i) = self.unclaimed.iter().position(|e| pick(e).is_some()) {
            let event = self.unclaimed.remove(i);
            return Ok(pick(&event).expect("picked above"));
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(event @ (Event::Agent(_) | Event::Qmp(_))) => {
                    self.record(&event);
                    if let Some(v) = pick(&event) {
                        return Ok(v);
                    }
                    if keep_for_later(&event) {
                        self.unclaimed.push(event);
                    }
                }
                Ok(other) => return Err(self.failure(other)),
                Err(RecvTimeoutError::Timeout) => {
                    return Err(self.timeout_error(what.to_string(), began.elapsed()));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(VmError::Protocol("event channel closed".into()))
                }
            }
        }
    }

    fn record(&mut self, event: &Event) {
        match event {
            Event::Agent(msg) => {
                let _ = writeln!(
                    self.transcript,
                    "< {}",
                    serde_json::to_string(msg).unwrap_or_default()
                );
            }
            Event::Qmp(m) => {
                let _ = writeln!(self.qmp_log, "< {m:?}");
                if let qmp::Message::Event { raw, .. } = m {
                    self.qmp_events.push(raw.clone());
                }
            }
            _ => {}
        }
    }

    /// A failure already queued (used while polling for the socket).
    fn poll_failure(&mut self) -> Result<Option<VmError>, VmError> {
        match self.events.try_recv() {
            Ok(event @ (Event::Agent(_) | Event::Qmp(_))) => {
                self.record(&event);
                Ok(None)
            }
            Err(_) => Ok(None),
            Ok(other) => Ok(Some(self.failure(other))),
        }
    }

    fn failure(&mut self, event: Event) -> VmError {
        match event {
            Event::Panic => {
                // The panic line comes first; the stack and "end Kernel panic"
                // follow within milliseconds. Give them a moment to arrive.
                thread::sleep(Duration::from_millis(300));
                let console = self.panic_text();
                self.panicked = Some(console.clone());
                VmError::Panic { console }
            }
            Event::QemuExited(status) => {
                // Let the console and stderr readers drain the pipes.
                thread::sleep(Duration::from_millis(100));
                if let Some(text) = self.console_has_panic() {
                    self.panicked = Some(text.clone());
                    return VmError::Panic { console: text };
                }
                VmError::QemuExited {
                    status: describe(status),
                    stderr: self.stderr.lock().unwrap().clone(),
                    console: self.console_tail(30),
                }
            }
            Event::AgentClosed => {
                // The socket closes when QEMU exits or the guest panics, a
                // moment before we hear of those: prefer the real cause.
                let deadline = Instant::now() + Duration::from_secs(2);
                while let Ok(next) = self
                    .events
                    .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                {
                    if matches!(next, Event::QemuExited(_) | Event::Panic) {
                        return self.failure(next);
                    }
                }
                VmError::AgentClosed {
                    console: self.console_tail(30),
                }
            }
            Event::Agent(_) | Event::Qmp(_) => unreachable!("messages are not failures"),
        }
    }

    fn timeout_error(&self, what: String, after: Duration) -> VmError {
        VmError::Timeout {
            what,
            after,
            console: self.console_tail(30),
        }
    }

    fn console_has_panic(&self) -> Option<String> {
        let seen = self
            .console
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(PANIC_MARKERS[0]));
        seen.then(|| self.panic_text())
    }

    fn panic_text(&self) -> String {
        panic_window(&self.console.lock().unwrap())
    }

    pub fn console_tail(&self, n: usize) -> String {
        let lines = self.console.lock().unwrap();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub fn qemu_stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Kill QEMU now (also done on drop).
    /// Returns once QEMU has been reaped (or after 5 s), so that when a case
    /// ends its QEMU is really gone, not a zombie waiting for the reaper.
    pub fn kill(&mut self) {
        if self.exited.load(Ordering::SeqCst) {
            return;
        }
        // SAFETY: plain syscall; the group is QEMU's own (process_group(0)).
        unsafe { libc::killpg(self.pid, libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.exited.load(Ordering::SeqCst) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The descriptor a restoring QEMU reads the snapshot's state from.
pub const INCOMING_FD: i32 = 3;

/// Both ends of a snapshot: `x-ignore-shared` leaves shared file-backed RAM
/// (every NVDIMM and CXL memory backend, `share=on`) out of the stream; the
/// snapshot keeps those files instead, so neither saving nor restoring reads
/// gigabytes of holes.
pub const MIGRATION_CAPABILITIES: [&str; 1] = ["x-ignore-shared"];

fn capabilities() -> Value {
    let caps: Vec<Value> = MIGRATION_CAPABILITIES
        .iter()
        .map(|c| json!({ "capability": c, "state": true }))
        .collect();
    json!({ "capabilities": caps })
}

/// Replies that nobody waits for yet are kept for a later wait; QMP events are kept by [`Vm::record`]; the rest is only logged.
fn keep_for_later(event: &Event) -> bool {
    matches!(
        event,
        Event::Agent(GuestMessage::Response { .. })
            | Event::Qmp(qmp::Message::Return { .. } | qmp::Message::Error { .. })
    )
}

/// The console from a little before the first panic-related line: five
/// lines of lead-in, at most 80 lines (else the last 30 lines).
fn panic_window(lines: &[String]) -> String {
    let first = lines
        .iter()
        .position(|l| {
            l.contains(PANIC_MARKERS[0])
                || l.contains("BUG:")
                || l.contains("Oops:")
                || l.contains("Machine check")
        })
        .unwrap_or(lines.len().saturating_sub(30));
    let start = first.saturating_sub(5);
    let end = lines.len().min(start + 80);
    lines[start..end].join("\n")
}

/// Console bytes to lines: chunks end anywhere, lines end in `\n` (with or
/// without `\r`), and the first panic or Oops line is reported once.
#[derive(Default)]
struct ConsoleLines {
    partial: Vec<u8>,
    panicked: bool,
}

impl ConsoleLines {
    /// The complete lines in `chunk` (with what came before), and whether
    /// one of them is the first sign of a panic or an Oops.
    fn feed(&mut self, chunk: &[u8]) -> (Vec<String>, bool) {
        self.partial.extend_from_slice(chunk);
        let mut lines = Vec::new();
        let mut first_panic = false;
        while let Some(end) = self.partial.iter().position(|b| *b == b'\n') {
            let raw: Vec<u8> = self.partial.drain(..=end).collect();
            let line = String::from_utf8_lossy(&raw)
                .trim_end_matches(['\r', '\n'])
                .to_string();
            let is_panic = PANIC_MARKERS
                .iter()
                .chain(&OOPS_MARKERS)
                .any(|m| line.contains(m));
            if is_panic && !self.panicked {
                self.panicked = true;
                first_panic = true;
            }
            lines.push(line);
        }
        (lines, first_panic)
    }
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "unknown status".into(),
    }
}

fn spawn_console_reader(
    mut stdout: impl Read + Send + 'static,
    mut log: File,
    console: Arc<Mutex<Vec<String>>>,
    tx: Sender<Event>,
    echo: bool,
) {
    thread::spawn(move || {
        // Read chunks, not lines: an interactive shell's prompt ends without
        // a newline and must reach the user's terminal at once.
        let mut chunk = [0u8; 4096];
        let mut splitter = ConsoleLines::default();
        loop {
            let n = match stdout.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let _ = log.write_all(&chunk[..n]);
            if echo {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&chunk[..n]);
                let _ = out.flush();
            }
            let (lines, first_panic) = splitter.feed(&chunk[..n]);
            console.lock().unwrap().extend(lines);
            if first_panic {
                let _ = tx.send(Event::Panic);
            }
        }
    });
}

fn spawn_qmp_reader(reader: BufReader<UnixStream>, tx: Sender<Event>) {
    thread::spawn(move || {
        for line in reader.lines() {
            let Ok(line) = line else { break };
            let parsed = serde_json::from_str::<Value>(&line)
                .map_err(|_| qmp::QmpError::Malformed {
                    what: "event",
                    line: line.clone(),
                })
                .and_then(qmp::Message::parse);
            match parsed {
                Ok(msg) => {
                    if tx.send(Event::Qmp(msg)).is_err() {
                        return;
                    }
                }
                Err(e) => eprintln!("pmem-lab: unparsable QMP line {line:?}: {e}"),
            }
        }
    });
}

fn spawn_agent_reader(stream: UnixStream, tx: Sender<Event>) {
    thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<GuestMessage>(&line) {
                Ok(msg) => {
                    if tx.send(Event::Agent(msg)).is_err() {
                        return;
                    }
                }
                // Not fatal by itself: the awaited reply will time out with
                // the transcript showing this line.
                Err(e) => eprintln!("pmem-lab: unparsable agent line {line:?}: {e}"),
            }
        }
        let _ = tx.send(Event::AgentClosed);
    });
}

/// The QEMU command line as a shell command, for artifacts and reproducing:
/// a private copy's library path and firmware folders included.
pub fn command_line(qemu: &Qemu, args: &[OsString]) -> String {
    let cmd = qemu.command();
    let env: String = cmd
        .get_envs()
        .filter_map(|(k, v)| {
            Some(format!(
                "{}={} ",
                k.to_string_lossy(),
                machine::shell_quote(&v?.to_string_lossy())
            ))
        })
        .collect();
    let all: Vec<OsString> = cmd
        .get_args()
        .map(OsString::from)
        .chain(args.iter().cloned())
        .collect();
    env + &machine::shell_quote_command(&qemu.binary.to_string_lossy(), &all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn console_chunks_become_lines_and_the_first_panic_is_reported_once() {
        let mut c = ConsoleLines::default();
        assert_eq!(c.feed(b"[    0.1] boot"), (vec![], false));
        assert_eq!(
            c.feed(b"ing\r\nsecond\n[    1.0] Kernel panic - not syncing: x\n"),
            (
                vec![
                    "[    0.1] booting".to_string(),
                    "second".to_string(),
                    "[    1.0] Kernel panic - not syncing: x".to_string()
                ],
                true
            )
        );
        // The stack after it is not a second report.
        assert_eq!(
            c.feed(b"---[ end Kernel panic - not syncing: x ]---\n"),
            (
                vec!["---[ end Kernel panic - not syncing: x ]---".to_string()],
                false
            )
        );
        let mut oops = ConsoleLines::default();
        assert!(
            oops.feed(b"BUG: kernel NULL pointer dereference, address: 0\n")
                .1
        );
        // Invalid UTF-8 does not lose the line.
        assert_eq!(ConsoleLines::default().feed(b"a\xffb\n").0, ["a\u{fffd}b"]);
    }

    #[test]
    fn the_panic_window_starts_a_little_before_the_first_sign() {
        let mut lines: Vec<String> = (0..200).map(|i| format!("line {i}")).collect();
        lines[100] = "Oops: 0000 [#1] SMP".into();
        let w = panic_window(&lines);
        assert!(w.starts_with("line 95\n"), "{w}");
        assert_eq!(w.lines().count(), 80);
        // No sign: the last 30 lines.
        let quiet: Vec<String> = (0..50).map(|i| format!("l{i}")).collect();
        let w = panic_window(&quiet);
        assert!(w.starts_with("l15\n") && w.ends_with("l49"), "{w}");
    }

    #[test]
    fn replies_wait_for_a_later_wait_other_messages_do_not() {
        let reply = Event::Agent(GuestMessage::Response {
            id: 1,
            reply: Reply::Done,
        });
        let ready = Event::Agent(GuestMessage::Ready {
            protocol: pmem_lab_proto::PROTOCOL_VERSION,
            agent_version: "x".into(),
            kernel_release: "6.12".into(),
            uptime_ms: 1,
        });
        assert!(keep_for_later(&reply));
        assert!(!keep_for_later(&ready));
        assert!(!keep_for_later(&Event::Panic));
        assert!(!keep_for_later(&Event::AgentClosed));
    }

    #[test]
    fn exit_statuses_are_described() {
        assert_eq!(describe(ExitStatus::from_raw(1 << 8)), "exit status 1");
        assert_eq!(describe(ExitStatus::from_raw(9)), "killed by signal 9");
    }
}
