//! The wire protocol between the lab (host) and the guest agent.
//!
//! One JSON object per line in each direction over a virtio-serial port.
//! The guest speaks first with [`GuestMessage::Ready`]; after that the host
//! sends [`Request`]s and the guest answers each with a
//! [`GuestMessage::Response`] carrying the same `id`. Requests may overlap:
//! the agent serves each on its own thread, so responses can arrive out of
//! order (later operations, such as a consumer waiting for a machine check,
//! depend on that).
//!
//! Versioning: [`PROTOCOL_VERSION`] is bumped on any incompatible change. The
//! host refuses an agent whose `Ready.protocol` differs, which catches a stale
//! initramfs instead of failing later with a confusing parse error.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Bump on any change that an older peer would misread.
pub const PROTOCOL_VERSION: u32 = 4;

/// Name of the virtio-serial port (`virtserialport,name=...`). The agent finds
/// its device by this name under /sys/class/virtio-ports.
pub const PORT_NAME: &str = "org.pmem-lab.agent.0";

/// The largest file `PutFile` carries: it crosses the JSON channel in one
/// line (a case's `put`, `lab shell --put`, a program compiled for a case).
pub const MAX_PUT_BYTES: u64 = 4 << 20;

/// Guest files the lab itself runs: a `PutFile` must not replace them.
pub const RESERVED_GUEST_PATHS: [&str; 2] = ["/init", "/sbin/pmem-lab-agent"];

/// Why `path` cannot be a `PutFile` target, or `None`: an absolute path in
/// its plain form (no `.`, `..`, empty part or trailing `/`, which would
/// name something other than what is written), no NUL, within the kernel's
/// name limits (255 bytes a part, 4095 in all), no `${` (put paths are not
/// templates), not under /proc, /sys or /dev (not regular files) and not a
/// file of the lab's own. One rule for the case loader, `lab shell --put`
/// and the agent.
pub fn guest_path_problem(path: &str) -> Option<String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Some(format!(
            "`{path}` is not absolute: write the guest path from /, e.g. /tmp/repro"
        ));
    };
    if path.contains('\0') {
        return Some("the guest path holds a NUL byte".into());
    }
    if path.len() > 4095 {
        return Some(format!(
            "the guest path has {} bytes; at most 4095",
            path.len()
        ));
    }
    if path.contains("${") {
        return Some(format!(
            "`{path}`: a put path is not a template; `${{...}}` is not expanded here"
        ));
    }
    for part in rest.split('/') {
        match part {
            "" | "." | ".." => {
                return Some(format!(
                    "`{path}` is not a plain file path (an empty part, `.`, `..` or a trailing `/`): write it as e.g. /tmp/repro"
                ))
            }
            p if p.len() > 255 => {
                return Some(format!("a part of `{path}` has {} bytes; at most 255", p.len()))
            }
            _ => {}
        }
    }
    let first = rest.split('/').next().unwrap_or("");
    if ["proc", "sys", "dev"].contains(&first) {
        return Some(format!(
            "`{path}`: put makes a regular file, not one under /proc, /sys or /dev"
        ));
    }
    if RESERVED_GUEST_PATHS.contains(&path) {
        return Some(format!(
            "`{path}` is the lab's own ({}): choose another path",
            RESERVED_GUEST_PATHS.join(", ")
        ));
    }
    None
}

/// Host -> guest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub id: u64,
    pub op: Op,
}

/// What the host asks the guest to do.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    /// Run a program (no shell involved: `argv[0]` is looked up in PATH).
    Run(RunRequest),
    /// Read small files (sysfs attributes) without starting a process:
    /// under TCG an exec costs tens of milliseconds, and the lab reads
    /// dozens of attributes after every step.
    ReadFiles {
        paths: Vec<String>,
    },
    /// The kernel's flags of these page frames, from /proc/kpageflags (8
    /// bytes per pfn at pfn * 8; bits in include/uapi/linux/
    /// kernel-page-flags.h, HWPOISON is 19). A file too big to read whole.
    /// The file ends at max_pfn (fs/proc/page.c): device memory hot-added
    /// above it is not listed (`None`).
    PageFlags {
        pfns: Vec<u64>,
    },
    /// Kernel log records with a sequence number above `after` (all when
    /// `None`), from /dev/kmsg: exact "since this step began" semantics,
    /// which diffing `dmesg` text cannot give.
    Kmsg {
        after: Option<u64>,
    },
    /// Write `contents` to an existing file (a sysfs attribute), without a
    /// shell in between.
    WriteFile {
        path: String,
        contents: String,
    },
    /// Create (or replace) a regular file with `contents`, its folders as
    /// needed: a program or script a case brings into the guest.
    PutFile {
        path: String,
        contents: Vec<u8>,
        /// Mode 0755 instead of 0644.
        executable: bool,
    },
    /// mmap `length` bytes of a device-dax character device at `offset`
    /// (MAP_SHARED, read/write) and keep the mapping as `name`.
    Map {
        name: String,
        path: String,
        offset: u64,
        length: u64,
    },
    Unmap {
        name: String,
    },
    /// Read one byte of every 4 KiB page of `[offset, offset + length)` of a
    /// mapping; the reply counts the minor faults that took.
    Touch {
        name: String,
        offset: u64,
        length: u64,
        cpu: Option<u32>,
    },
    /// In a child process (pinned to `cpu` if given), load the cache line at
    /// `offset` once, as any program would, and report the signal it got
    /// (the lab's poison model, armed on that line before, turns the load
    /// into a machine check). `timeout_ms` bounds the child.
    Consume {
        name: String,
        offset: u64,
        cpu: Option<u32>,
        timeout_ms: u64,
    },
    /// In a child process, madvise(MADV_HWPOISON) the page at `offset`: the
    /// kernel's software injector (what ndctl's dax-poison test uses).
    Poison {
        name: String,
        offset: u64,
        cpu: Option<u32>,
    },
    /// SIGBUS signals the agent process itself received (the action-optional
    /// ones memory_failure() sends to early-kill tasks) since the last call,
    /// waiting up to `wait_ms` for the first.
    Signals {
        wait_ms: u64,
    },
    /// prctl(PR_MCE_KILL) on the agent's long-lived main thread: `early`,
    /// `late`, or `default` (clear, follow vm.memory_failure_early_kill).
    MceKill {
        policy: String,
    },
    /// The file's extents (FS_IOC_FIEMAP, synced first): where on the block
    /// device its bytes live.
    Fiemap {
        path: String,
    },
}

/// One FIEMAP extent, in bytes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Extent {
    pub logical: u64,
    pub physical: u64,
    pub length: u64,
}

/// What a SIGBUS handler saw in its siginfo.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SignalInfo {
    pub signo: i32,
    pub code: i32,
    /// si_addr, a virtual address in the agent's (or its child's) space.
    pub addr: u64,
    /// si_addr_lsb: log2 of the size of the poisoned mapping.
    pub addr_lsb: u16,
    pub tid: i32,
}

impl SignalInfo {
    pub const SIGBUS: i32 = 7;
    pub const BUS_MCEERR_AR: i32 = 4;
    pub const BUS_MCEERR_AO: i32 = 5;

    pub fn signal_name(&self) -> String {
        match self.signo {
            Self::SIGBUS => "SIGBUS".into(),
            n => format!("signal {n}"),
        }
    }

    pub fn code_name(&self) -> String {
        match (self.signo, self.code) {
            (Self::SIGBUS, 1) => "BUS_ADRALN".into(),
            (Self::SIGBUS, 2) => "BUS_ADRERR".into(),
            (Self::SIGBUS, 3) => "BUS_OBJERR".into(),
            (Self::SIGBUS, Self::BUS_MCEERR_AR) => "BUS_MCEERR_AR".into(),
            (Self::SIGBUS, Self::BUS_MCEERR_AO) => "BUS_MCEERR_AO".into(),
            (_, c) => format!("code {c}"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    pub argv: Vec<String>,
    /// Written to the program's stdin, which is then closed. `None`: /dev/null.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Added to the agent's environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The agent kills the program's process group after this long.
    pub timeout_ms: u64,
    /// Run on this terminal instead (stdin, stdout and stderr), as a session
    /// leader with it as controlling tty: an interactive shell on the serial
    /// console, where Ctrl-C works. stdout/stderr are then not captured.
    #[serde(default)]
    pub tty: Option<String>,
}

/// Guest -> host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum GuestMessage {
    /// Sent once, as soon as the agent has opened its port.
    Ready {
        protocol: u32,
        agent_version: String,
        /// `uname -r` of the guest kernel.
        kernel_release: String,
        /// Milliseconds since the guest kernel booted (CLOCK_BOOTTIME).
        uptime_ms: u64,
    },
    Response {
        id: u64,
        reply: Reply,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Reply {
    Run(RunResult),
    /// The operation completed and has nothing to return.
    Done,
    /// One entry per requested path, in order.
    Files {
        files: Vec<FileRead>,
    },
    Kmsg {
        records: Vec<KmsgRecord>,
    },
    /// One entry per requested pfn, in order; `None` past the file's end.
    PageFlags {
        flags: Vec<Option<u64>>,
    },
    Mapped {
        /// Where the mapping starts in the agent's address space.
        address: u64,
    },
    Touched {
        pages: u64,
        /// Minor faults (getrusage) the touching thread took.
        faults: u64,
    },
    /// The outcome of `consume` or `poison`: the signal the child got, if
    /// any, and how long it ran.
    Consumed {
        signal: Option<SignalInfo>,
        duration_ms: u64,
    },
    Signals {
        signals: Vec<SignalInfo>,
    },
    Extents {
        extents: Vec<Extent>,
    },
    /// The request could not be carried out at all (e.g. the program does not
    /// exist). A program that runs and fails is a `Run` with its exit status.
    Error {
        message: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FileRead {
    Text { text: String },
    Error { message: String },
}

/// One /dev/kmsg record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KmsgRecord {
    pub seq: u64,
    /// Syslog priority (0 emerg .. 7 debug).
    pub level: u8,
    /// Microseconds since boot.
    pub usec: u64,
    pub text: String,
}

impl KmsgRecord {
    /// Parse "PRI,SEQ,USEC,FLAGS[,...];TEXT" (continuation lines, which
    /// start with a space, are not part of the record text).
    pub fn parse(record: &str) -> Option<KmsgRecord> {
        let (head, body) = record.split_once(';')?;
        let mut fields = head.split(',');
        let pri: u32 = fields.next()?.parse().ok()?;
        let seq = fields.next()?.parse().ok()?;
        let usec = fields.next()?.parse().ok()?;
        let text = body.lines().next().unwrap_or("").to_string();
        Some(KmsgRecord {
            seq,
            level: (pri & 7) as u8,
            usec,
            text,
        })
    }

    /// Like dmesg: `[   12.345678] text`.
    pub fn render(&self) -> String {
        format!(
            "[{:5}.{:06}] {}",
            self.usec / 1_000_000,
            self.usec % 1_000_000,
            self.text
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct RunResult {
    /// Exit status when the program exited normally.
    pub exit_code: Option<i32>,
    /// Signal number when the program was killed by a signal.
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// True when the agent killed the program at `timeout_ms`.
    pub timed_out: bool,
    pub duration_ms: u64,
}

impl RunResult {
    /// "exit 0", "signal 9", "timed out after 100 ms": for messages.
    pub fn status_text(&self) -> String {
        match (self.timed_out, self.exit_code, self.signal) {
            (true, _, _) => format!("timed out after {} ms", self.duration_ms),
            (false, Some(code), _) => format!("exit {code}"),
            (false, None, Some(sig)) => format!("killed by signal {sig}"),
            (false, None, None) => "unknown status".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_as_one_line() {
        let req = Request {
            id: 7,
            op: Op::Run(RunRequest {
                argv: vec!["ndctl".into(), "list".into()],
                timeout_ms: 1000,
                ..Default::default()
            }),
        };
        let line = serde_json::to_string(&req).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), req);
    }

    #[test]
    fn ready_has_a_stable_shape() {
        let line = r#"{"type":"ready","protocol":1,"agent_version":"0.1.0","kernel_release":"6.12.117","uptime_ms":1200}"#;
        match serde_json::from_str::<GuestMessage>(line).unwrap() {
            GuestMessage::Ready {
                protocol,
                kernel_release,
                ..
            } => {
                assert_eq!(protocol, 1);
                assert_eq!(kernel_release, "6.12.117");
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn kmsg_records_parse_like_the_kernel_writes_them() {
        let r = KmsgRecord::parse(
            "4,812,2345678,-;Memory failure: 0x10200: recovery action\n SUBSYSTEM=x",
        )
        .unwrap();
        assert_eq!((r.level, r.seq, r.usec), (4, 812, 2345678));
        assert_eq!(r.text, "Memory failure: 0x10200: recovery action");
        assert_eq!(
            r.render(),
            "[    2.345678] Memory failure: 0x10200: recovery action"
        );
        assert!(KmsgRecord::parse("garbage").is_none());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let line = r#"{"id":1,"op":{"kind":"run","argv":[],"timeout_ms":1,"shell":true}}"#;
        assert!(serde_json::from_str::<Request>(line).is_err());
    }

    #[test]
    fn guest_paths_are_plain_absolute_files_of_the_cases_own() {
        assert_eq!(guest_path_problem("/tmp/repro"), None);
        assert_eq!(guest_path_problem("/root/a b/..c"), None);
        for (bad, why) in [
            ("tmp/x", "not absolute"),
            ("/tmp/.", "not a plain"),
            ("/tmp/x/", "not a plain"),
            ("/tmp//x", "not a plain"),
            ("/tmp/../etc/x", "not a plain"),
            ("/tmp/a\0b", "NUL"),
            ("/tmp/${ns.dev}", "not a template"),
            ("/proc/sys/kernel/x", "/proc, /sys or /dev"),
            ("/dev/pmem0", "/proc, /sys or /dev"),
            ("/sbin/pmem-lab-agent", "the lab's own"),
            ("/init", "the lab's own"),
        ] {
            let e = guest_path_problem(bad).unwrap_or_default();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let long = format!("/tmp/{}", "a".repeat(256));
        assert!(guest_path_problem(&long).unwrap().contains("at most 255"));
        let deep = "/a".repeat(2100);
        assert!(guest_path_problem(&deep).unwrap().contains("at most 4095"));
    }
}
