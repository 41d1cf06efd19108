//! Talking to the guest agent, on top of [`Vm`].

use crate::vm::{Vm, VmError};
use pmem_lab_proto::{FileRead, KmsgRecord, Op, Reply, RunRequest, RunResult};
use std::time::Duration;

/// Slack on top of a command's own timeout: under TCG the agent's reply can
/// lag the kill by a second or two.
const REPLY_SLACK: Duration = Duration::from_secs(15);
/// Timeout of the lab's own housekeeping commands (ndctl list, cat, ...).
pub const HOUSEKEEPING_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Guest {
    pub vm: Vm,
}

impl Guest {
    /// Run a command; an error means the VM or the agent failed, not the
    /// command (a failing command is an `Ok` with its exit status).
    pub fn run(&mut self, req: RunRequest) -> Result<RunResult, VmError> {
        let wait = Duration::from_millis(req.timeout_ms) + REPLY_SLACK;
        match self.vm.request(Op::Run(req), wait)? {
            Reply::Run(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    /// Run a lab housekeeping command that must succeed.
    pub fn ok(&mut self, argv: &[&str]) -> Result<RunResult, String> {
        let req = RunRequest {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            timeout_ms: HOUSEKEEPING_TIMEOUT.as_millis() as u64,
            ..Default::default()
        };
        let r = self
            .run(req)
            .map_err(|e| format!("`{}`: {e}", argv.join(" ")))?;
        if r.exit_code == Some(0) {
            Ok(r)
        } else {
            Err(format!(
                "`{}` failed ({}):\n{}{}",
                argv.join(" "),
                r.status_text(),
                r.stdout,
                r.stderr
            ))
        }
    }

    /// Read files (sysfs attributes) in one round trip; per file, its text
    /// or why it could not be read.
    pub fn read_files(&mut self, paths: &[String]) -> Result<Vec<Result<String, String>>, VmError> {
        match self.vm.request(
            Op::ReadFiles {
                paths: paths.to_vec(),
            },
            HOUSEKEEPING_TIMEOUT,
        )? {
            Reply::Files { files } => Ok(files
                .into_iter()
                .map(|f| match f {
                    FileRead::Text { text } => Ok(text),
                    FileRead::Error { message } => Err(message),
                })
                .collect()),
            other => Err(unexpected(other)),
        }
    }

    /// Read files that must exist; the error names the first that does not.
    pub fn read_all(&mut self, paths: &[String]) -> Result<Vec<String>, String> {
        let got = self.read_files(paths).map_err(|e| e.to_string())?;
        paths
            .iter()
            .zip(got)
            .map(|(p, r)| r.map_err(|e| format!("cannot read {p} in the guest: {e}")))
            .collect()
    }

    /// Write a sysfs attribute (or any existing file).
    pub fn write_file(&mut self, path: &str, contents: &str) -> Result<(), String> {
        let op = Op::WriteFile {
            path: path.to_string(),
            contents: contents.to_string(),
        };
        match self
            .vm
            .request(op, HOUSEKEEPING_TIMEOUT)
            .map_err(|e| e.to_string())?
        {
            Reply::Done => Ok(()),
            other => Err(unexpected(other).to_string()),
        }
    }

    /// Create or replace a regular file (see [`Op::PutFile`]).
    pub fn put_file(
        &mut self,
        path: &str,
        contents: Vec<u8>,
        executable: bool,
        timeout: Duration,
    ) -> Result<(), String> {
        let op = Op::PutFile {
            path: path.to_string(),
            contents,
            executable,
        };
        match self.vm.request(op, timeout).map_err(|e| e.to_string())? {
            Reply::Done => Ok(()),
            other => Err(unexpected(other).to_string()),
        }
    }

    /// Kernel log records after sequence number `after`.
    pub fn kmsg(&mut self, after: Option<u64>) -> Result<Vec<KmsgRecord>, VmError> {
        match self.vm.request(Op::Kmsg { after }, HOUSEKEEPING_TIMEOUT)? {
            Reply::Kmsg { records } => Ok(records),
            other => Err(unexpected(other)),
        }
    }
}

fn unexpected(reply: Reply) -> VmError {
    match reply {
        Reply::Error { message } => VmError::Protocol(message),
        other => VmError::Protocol(format!("unexpected reply {other:?}")),
    }
}
