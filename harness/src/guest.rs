//! Running programs in the guest through the agent, on top of [`Vm`].

use crate::vm::{Vm, VmError};
use pmem_lab_proto::{Op, Reply, RunRequest, RunResult};
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
            Reply::Error { message } => Err(VmError::Protocol(message)),
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
}
