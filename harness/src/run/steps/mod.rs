//! The step kinds' executors: one module per kind module of the spec crate
//! (harness/spec/src/case/step/), one function per kind named by its key
//! (`command::sh` for `sh`), and [`CaseRun::act`], the one match over
//! [`Action`] that picks them. All three are written by [`executors!`] from
//! the spec crate's list of kinds (`pmem_lab_spec::with_step_kinds!`), so a
//! new kind does not compile until its module here has its function; what
//! every step does after its action (the poison model's count, the oracle,
//! the kernel log, the verdict) is [`CaseRun::after`]'s, in the runner.

use super::failure::{Failure, StepAt};
use super::{show, CaseRun};
use crate::case::step::BadblocksCheck;
use crate::case::{Action, Step};
use crate::guest::GuestError;
use pmem_lab_proto::{RunRequest, RunResult, SignalInfo};
use std::fmt::Write as _;

/// How an executor says the step could not run (a guest or lab error, not
/// a broken expectation): [`Failure::broke`] at the step.
type Broke<'a> = dyn Fn(GuestError) -> Failure + 'a;

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

impl Acted<'_> {
    /// The step's `expect.signal` checked on the signals it got (`base`:
    /// the mapping's start, for a mapping-relative address).
    fn signals(step: &Step, got: &[SignalInfo], base: Option<u64>) -> Self {
        Acted {
            problems: step
                .signal
                .as_ref()
                .map(|e| e.check(got, base))
                .unwrap_or_default(),
            ..Acted::default()
        }
    }
}

/// A check a step asks of the error state after it.
pub(super) enum OnState<'s> {
    /// `expect_badblocks`: the ranges, in every view of the target.
    Badblocks(&'s BadblocksCheck),
    /// A namespace `clear-errors` said it cleared: nothing may be left in
    /// it (ndctl issue 158).
    Cleared(String),
}

/// From the spec crate's list of kinds: `mod` for each kind module, and
/// `act`, whose match has an arm per kind calling `<module>::<key>`.
macro_rules! executors {
    ($($module:ident { $($(#[$doc:meta])* $key:ident => $Kind:ident,)* })*) => {
        $(mod $module;)*

        impl CaseRun<'_> {
            /// Run `step`'s action (not a `panic` step:
            /// [`CaseRun::expect_panic`]).
            pub(super) fn act<'s>(
                &mut self,
                step: &'s Step,
                at: &StepAt,
            ) -> Result<Acted<'s>, Failure> {
                let broke = Failure::broke(at);
                match &step.action {
                    $($(Action::$Kind(checked) => $module::$key(self, step, checked, &broke),)*)*
                }
            }
        }
    };
}

pmem_lab_spec::with_step_kinds!(executors);

impl CaseRun<'_> {
    /// Run a command in the guest, log it, and add it to the failure
    /// details.
    fn command(
        &mut self,
        step: &Step,
        broke: &Broke,
        req: RunRequest,
        details: &mut String,
    ) -> Result<RunResult, Failure> {
        let result = self.guest.run(req.clone()).map_err(|e| broke(e.into()))?;
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
