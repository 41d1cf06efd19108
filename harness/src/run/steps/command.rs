//! `run` and `sh` (spec: step/command.rs): a command in the guest, its
//! placeholders expanded; a `panic` step instead expects the guest to die.

use super::{Acted, Broke};
use crate::case::step::Command;
use crate::case::Step;
use crate::run::failure::{Failure, StepAt};
use crate::run::{show, CaseRun};
use crate::template;
use crate::guest::{Absent, GuestError};
use crate::vm::VmError;
use pmem_lab_proto::RunRequest;

pub(super) fn run<'s>(
    r: &mut CaseRun<'_>,
    step: &'s Step,
    c: &Command,
    broke: &Broke,
) -> Result<Acted<'s>, Failure> {
    let req = r.request(step, c).map_err(broke)?;
    let mut acted = Acted::default();
    let result = r.command(step, broke, req, &mut acted.details)?;
    acted.problems.extend(step.expect.check(&result));
    Ok(acted)
}

/// `sh` is `run` of `sh -c SCRIPT` (the loader built the argv).
pub(super) use self::run as sh;

impl CaseRun<'_> {

    /// The agent's request for `c`, `${...}` expanded from the layout.
    fn request(&self, step: &Step, c: &Command) -> Result<RunRequest, GuestError> {
        let expand = |s: &str| template::expand(s, |r| self.layout.lookup(r));
        let Command { argv, stdin, env } = c;
        Ok(RunRequest {
            argv: argv.iter().map(|a| expand(a)).collect::<Result<_, _>>()?,
            stdin: stdin.as_deref().map(expand).transpose()?,
            env: env
                .iter()
                .map(|(k, v)| expand(v).map(|v| (k.clone(), v)))
                .collect::<Result<_, _>>()?,
            timeout_ms: step.timeout.as_millis() as u64,
            tty: None,
        })
    }

    /// A `run`/`sh` step that must panic the guest (the case's last): the
    /// panic text must match, and the machine checks the poison model
    /// raised on the way are counted as for any step. No observation after
    /// it: the VM is gone.
    pub(in crate::run) fn expect_panic(
        &mut self,
        step: &Step,
        at: &StepAt,
        panic: &regex::Regex,
    ) -> Result<(), Failure> {
        let broke = Failure::broke(at);
        let c = match &step.action {
            crate::case::Action::Run(c) | crate::case::Action::Sh(c) => c,
            // The loader refuses `panic` beside any other kind.
            _ => {
                return Err(broke(GuestError::Missing(
                    Absent::Command,
                    "`panic` on a step that runs no command".into(),
                )))
            }
        };
        let req = self.request(step, c).map_err(&broke)?;
        let mut problems = Vec::new();
        let mut details = String::new();
        match self.guest.run(req.clone()) {
            Err(VmError::Panic { console }) => {
                self.note(
                    step,
                    format!("the guest panicked, as the step expects:\n{console}"),
                );
                if !panic.is_match(&console) {
                    problems.push(format!(
                        "the guest panicked, but no console line matches /{panic}/"
                    ));
                }
                details.push_str(&show("console", &console));
            }
            Ok(result) => {
                self.log.step(step, &req, &result);
                problems.push(format!(
                    "expected the guest kernel to panic, but the command ended ({})",
                    result.status_text()
                ));
            }
            Err(e) => return Err(broke(e.into())),
        }
        if let Some(w) = &self.poison {
            let consumed = w.take().consumptions;
            problems.extend(self.machine_checks(step, &consumed));
        }
        if problems.is_empty() {
            return Ok(());
        }
        Err(Failure::StepFailed {
            at: at.clone(),
            problems,
            details,
        })
    }
}
