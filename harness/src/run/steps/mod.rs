//! The step kinds' executors: one module per kind module of the spec crate
//! (harness/spec/src/case/step/), and [`CaseRun::act`], the one match over
//! [`Action`] that picks them. A new kind does not compile until it has its
//! arm here; what every step does after its action (the poison model's
//! count, the oracle, the kernel log, the verdict) is [`CaseRun::after`]'s,
//! in the runner.

mod badblocks;
mod command;
mod consume;
mod cxl;
mod inject;
mod map;
mod ndctl;
mod put;
mod reconfigure;
mod signals;
mod touch;

use super::failure::{Failure, StepAt};
use super::{show, CaseRun};
use crate::case::step::BadblocksCheck;
use crate::case::{Action, Step};
use pmem_lab_proto::{RunRequest, RunResult};
use std::fmt::Write as _;

/// How an executor says the step could not run (a guest or lab error, not
/// a broken expectation): [`Failure::broke`] at the step.
type Broke<'a> = dyn Fn(String) -> Failure + 'a;

/// What a step's action leaves for the checks after it.
#[derive(Default)]
pub(super) struct Acted<'s> {
    /// Expectations the action's own result broke.
    pub problems: Vec<String>,
    /// What a failure message shows (commands' argv and output).
    pub details: String,
    /// Checks on the error state the oracle takes after the action.
    pub on_state: Vec<OnState<'s>>,
}

/// A check a step asks of the error state after it.
pub(super) enum OnState<'s> {
    /// `expect_badblocks`: the ranges, in every view of the target.
    Badblocks(&'s BadblocksCheck),
    /// A namespace `clear-errors` said it cleared: nothing may be left in
    /// it (ndctl issue 158).
    Cleared(String),
}

impl CaseRun<'_> {
    /// Run `step`'s action (not a `panic` step: [`CaseRun::expect_panic`]).
    pub(super) fn act<'s>(&mut self, step: &'s Step, at: &StepAt) -> Result<Acted<'s>, Failure> {
        let broke = Failure::broke(at);
        match &step.action {
            Action::Run(c) | Action::Sh(c) => self.run_command(step, c, &broke),
            Action::InjectError(op) | Action::Scrub(op) | Action::Clear(op) => {
                self.ndctl(step, op, &broke)
            }
            Action::Inject(spec) => self.inject(step, spec, &broke),
            Action::CxlInjectPoison(at) => self.cxl_inject_poison(step, at, &broke),
            Action::ExpectCxlPoison(check) => self.expect_cxl_poison(check, &broke),
            Action::ExpectBadblocks(check) => Ok(Acted {
                on_state: vec![OnState::Badblocks(check)],
                ..Acted::default()
            }),
            Action::Map(spec) => self.map(spec, &broke),
            Action::Unmap(name) => self.unmap(name, &broke),
            Action::Touch(spec) => self.touch(step, spec, &broke),
            Action::Consume(line) => self.consume(step, line, &broke),
            Action::Poison(line) => self.poison_page(step, line, &broke),
            Action::Signals(wait) => self.signals(step, *wait, &broke),
            Action::MceKill(policy) => self.mce_kill(policy, &broke),
            Action::Put(spec) => self.put(step, spec, &broke),
            Action::Reconfigure(spec) => self.reconfigure(step, spec, &broke),
        }
    }

    /// Run a command in the guest, log it, and add it to the failure
    /// details.
    fn command(
        &mut self,
        step: &Step,
        broke: &Broke,
        req: RunRequest,
        details: &mut String,
    ) -> Result<RunResult, Failure> {
        let result = self
            .guest
            .run(req.clone())
            .map_err(|e| broke(e.to_string()))?;
        self.log.step(step, &req, &result);
        let _ = write!(
            details,
            "  argv: {:?}\n  {}\n{}{}",
            req.argv,
            result.status_text(),
            show("stdout", &result.stdout),
            show("stderr", &result.stderr)
        );
        Ok(result)
    }
}
