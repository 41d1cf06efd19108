//! Talking to the guest agent, on top of [`Vm`].

pub mod bring;
pub mod compile;
pub mod cxl;
pub mod dax;
pub mod error;
pub mod inject;
pub mod ndctl;
pub mod setup;

pub use error::{Absent, Context, GuestError};

use crate::vm::{Ready, Vm, VmError};
use pmem_lab_proto::{Extent, FileRead, KmsgRecord, Op, Reply, RunRequest, RunResult, SignalInfo};
use std::time::{Duration, Instant};

/// Slack on top of a command's own timeout: under TCG the agent's reply can
/// lag the kill by a second or two.
const REPLY_SLACK: Duration = Duration::from_secs(15);
/// Timeout of the lab's own housekeeping commands (ndctl list, cat, ...).
pub const HOUSEKEEPING_TIMEOUT: Duration = Duration::from_secs(60);

/// The guest agent's typed client: one method per agent operation, each
/// waiting for the reply it expects. The machine underneath (QMP, HMP, QEMU's
/// events, its life) is [`Guest::vm`]'s.
pub struct Guest {
    vm: Vm,
}

impl Guest {
    pub fn new(vm: Vm) -> Guest {
        Guest { vm }
    }

    /// The VM: host-side operations (QMP, HMP, stop and resume, QEMU's
    /// events), and agent requests that must stay in flight while the host
    /// acts ([`Vm::send`], [`Vm::wait_reply`]).
    pub fn vm(&mut self) -> &mut Vm {
        &mut self.vm
    }

    /// A VM started from a snapshot: load it ([`Vm::load_snapshot`]), then
    /// ask the agent, which is where setup left it, who it is.
    pub fn wait_restored(&mut self, timeout: Duration) -> Result<Ready, VmError> {
        let mut phases = self.vm.load_snapshot(timeout)?;
        let since = Instant::now();
        let left = (self.vm.started() + timeout).saturating_duration_since(since);
        let paths = ["/proc/sys/kernel/osrelease", "/proc/uptime"].map(String::from);
        let files = self.read_files_within(&paths, left)?;
        let text = |i: usize| match files.get(i) {
            Some(Ok(text)) => text.trim().to_string(),
            _ => String::new(),
        };
        let uptime = text(1)
            .split_whitespace()
            .next()
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or_default();
        phases.push(format!("agent answered {} ms", since.elapsed().as_millis()));
        Ok(Ready {
            kernel_release: text(0),
            boot_time: self.vm.started().elapsed(),
            guest_uptime: Duration::from_secs_f64(uptime),
            phases: phases.join(", "),
        })
    }

    /// Kill QEMU now (also done when the guest is dropped).
    pub fn kill(&mut self) {
        self.vm.kill();
    }

    /// Send `op`, wait for its reply, and take the reply `pick` expects:
    /// the one call-and-expect path of every agent operation. An agent
    /// `Error` reply, or any other reply, is a protocol error.
    fn call<T>(
        &mut self,
        op: Op,
        timeout: Duration,
        pick: impl FnOnce(Reply) -> Result<T, Reply>,
    ) -> Result<T, VmError> {
        let reply = self.vm.request(op, timeout)?;
        pick(reply).map_err(unexpected)
    }

    fn done(&mut self, op: Op, timeout: Duration) -> Result<(), VmError> {
        self.call(op, timeout, |r| match r {
            Reply::Done => Ok(()),
            other => Err(other),
        })
    }

    /// mmap `length` bytes of the dax device `path` at `offset` as `name`;
    /// the mapping's address in the agent.
    pub fn map_dax(
        &mut self,
        name: &str,
        path: &str,
        offset: u64,
        length: u64,
    ) -> Result<u64, VmError> {
        let op = Op::Map {
            name: name.into(),
            path: path.into(),
            offset,
            length,
        };
        self.call(op, HOUSEKEEPING_TIMEOUT, |r| match r {
            Reply::Mapped { address } => Ok(address),
            other => Err(other),
        })
    }

    pub fn unmap(&mut self, name: &str) -> Result<(), VmError> {
        self.done(Op::Unmap { name: name.into() }, HOUSEKEEPING_TIMEOUT)
    }

    /// (pages touched, minor faults taken).
    pub fn touch(
        &mut self,
        name: &str,
        offset: u64,
        length: u64,
        cpu: Option<u32>,
    ) -> Result<(u64, u64), VmError> {
        let op = Op::Touch {
            name: name.into(),
            offset,
            length,
            cpu,
        };
        self.call(op, HOUSEKEEPING_TIMEOUT, |r| match r {
            Reply::Touched { pages, faults } => Ok((pages, faults)),
            other => Err(other),
        })
    }

    /// madvise(MADV_HWPOISON) the page at `offset` of mapping `name` from a
    /// child pinned to `cpu`; the signal it got.
    pub fn poison(
        &mut self,
        name: &str,
        offset: u64,
        cpu: u32,
    ) -> Result<Option<SignalInfo>, VmError> {
        let op = Op::Poison {
            name: name.into(),
            offset,
            cpu: Some(cpu),
        };
        self.call(op, HOUSEKEEPING_TIMEOUT, |r| match r {
            Reply::Consumed { signal, .. } => Ok(signal),
            other => Err(other),
        })
    }

    /// The SIGBUS signals the agent received, waiting up to `wait` for one.
    pub fn signals(&mut self, wait: Duration) -> Result<Vec<SignalInfo>, VmError> {
        let op = Op::Signals {
            wait_ms: wait.as_millis() as u64,
        };
        self.call(op, HOUSEKEEPING_TIMEOUT + wait, |r| match r {
            Reply::Signals { signals } => Ok(signals),
            other => Err(other),
        })
    }

    pub fn mce_kill(&mut self, policy: &str) -> Result<(), VmError> {
        let op = Op::MceKill {
            policy: policy.into(),
        };
        self.done(op, HOUSEKEEPING_TIMEOUT)
    }

    /// /proc/kpageflags of these page frames (`None`: not listed).
    pub fn page_flags(&mut self, pfns: &[u64]) -> Result<Vec<Option<u64>>, VmError> {
        let op = Op::PageFlags {
            pfns: pfns.to_vec(),
        };
        self.call(op, HOUSEKEEPING_TIMEOUT, |r| match r {
            Reply::PageFlags { flags } => Ok(flags),
            other => Err(other),
        })
    }

    /// A file's extents (FS_IOC_FIEMAP).
    pub fn fiemap(&mut self, path: &str) -> Result<Vec<Extent>, VmError> {
        let op = Op::Fiemap { path: path.into() };
        self.call(op, Duration::from_secs(30), |r| match r {
            Reply::Extents { extents } => Ok(extents),
            other => Err(other),
        })
    }

    /// Run a command; an error means the VM or the agent failed, not the
    /// command (a failing command is an `Ok` with its exit status).
    pub fn run(&mut self, req: RunRequest) -> Result<RunResult, VmError> {
        let wait = Duration::from_millis(req.timeout_ms) + REPLY_SLACK;
        self.call(Op::Run(req), wait, |r| match r {
            Reply::Run(r) => Ok(r),
            other => Err(other),
        })
    }

    /// Run a lab housekeeping command that must succeed.
    pub fn ok(&mut self, argv: &[&str]) -> Result<RunResult, GuestError> {
        let req = RunRequest {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            timeout_ms: HOUSEKEEPING_TIMEOUT.as_millis() as u64,
            ..Default::default()
        };
        let r = self.run(req).context(|| format!("`{}`", argv.join(" ")))?;
        if r.exit_code == Some(0) {
            Ok(r)
        } else {
            Err(GuestError::Command {
                argv: argv.join(" "),
                status: r.status_text(),
                output: format!("{}{}", r.stdout, r.stderr),
            })
        }
    }

    /// [`Guest::ok`] of a command that prints one JSON value (ndctl's and
    /// cxl's create commands): the value, or its output as unreadable.
    pub fn ok_json(&mut self, argv: &[&str]) -> Result<serde_json::Value, GuestError> {
        let out = self.ok(argv)?;
        serde_json::from_str(&out.stdout).map_err(|e| {
            let what = format!("`{}`'s output", argv[..2.min(argv.len())].join(" "));
            crate::unreadable::Unreadable::new(what, format!("not JSON ({e})"), &out.stdout).into()
        })
    }

    /// Read files (sysfs attributes) in one round trip; per file, its text
    /// or why it could not be read.
    pub fn read_files(&mut self, paths: &[String]) -> Result<Vec<Result<String, String>>, VmError> {
        self.read_files_within(paths, HOUSEKEEPING_TIMEOUT)
    }

    /// [`Guest::read_files`] within `timeout`.
    fn read_files_within(
        &mut self,
        paths: &[String],
        timeout: Duration,
    ) -> Result<Vec<Result<String, String>>, VmError> {
        let op = Op::ReadFiles {
            paths: paths.to_vec(),
        };
        // One answer per path, in order: callers index the answers by their
        // paths, so a reply of another length is the agent's error.
        self.call(op, timeout, |r| match r {
            Reply::Files { files } if files.len() == paths.len() => Ok(files
                .into_iter()
                .map(|f| match f {
                    FileRead::Text { text } => Ok(text),
                    FileRead::Error { message } => Err(message),
                })
                .collect()),
            other => Err(other),
        })
    }

    /// Read files that must exist; the error names the first that does not.
    pub fn read_all(&mut self, paths: &[String]) -> Result<Vec<String>, GuestError> {
        let got = self.read_files(paths)?;
        paths
            .iter()
            .zip(got)
            .map(|(p, r)| {
                r.map_err(|message| GuestError::File {
                    action: "read",
                    path: p.clone(),
                    message,
                })
            })
            .collect()
    }

    /// Write a sysfs attribute (or any existing file).
    pub fn write_file(&mut self, path: &str, contents: &str) -> Result<(), VmError> {
        let op = Op::WriteFile {
            path: path.to_string(),
            contents: contents.to_string(),
        };
        self.done(op, HOUSEKEEPING_TIMEOUT)
    }

    /// Create or replace a regular file (see [`Op::PutFile`]).
    pub fn put_file(
        &mut self,
        path: &str,
        contents: Vec<u8>,
        executable: bool,
        timeout: Duration,
    ) -> Result<(), VmError> {
        let op = Op::PutFile {
            path: path.to_string(),
            contents,
            executable,
        };
        self.done(op, timeout)
    }

    /// Kernel log records after sequence number `after`.
    pub fn kmsg(&mut self, after: Option<u64>) -> Result<Vec<KmsgRecord>, VmError> {
        self.call(Op::Kmsg { after }, HOUSEKEEPING_TIMEOUT, |r| match r {
            Reply::Kmsg { records } => Ok(records),
            other => Err(other),
        })
    }
}

/// The protocol error for a reply that is not the one asked for (an
/// agent `Error` reply gives its own words).
fn unexpected(reply: Reply) -> VmError {
    match reply {
        Reply::Error { message } => VmError::Protocol(message),
        other => VmError::Protocol(format!("unexpected reply {other:?}")),
    }
}
