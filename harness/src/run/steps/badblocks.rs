//! `expect_badblocks` (spec: step/badblocks.rs): checked on the error state
//! the oracle takes after the step, like a clear's "nothing left".

use super::{Acted, Broke, OnState};
use crate::case::step::BadblocksCheck;
use crate::case::Step;
use crate::observe::{checks, oracle::ErrorState};
use crate::run::failure::Failure;
use crate::run::CaseRun;

/// Nothing to do now: the check runs on the state after the step.
pub(super) fn expect_badblocks<'s>(
    _r: &mut CaseRun<'_>,
    _step: &'s Step,
    check: &'s BadblocksCheck,
    _broke: &Broke,
) -> Result<Acted<'s>, Failure> {
    Ok(Acted {
        on_state: vec![OnState::Badblocks(check)],
        ..Acted::default()
    })
}

impl CaseRun<'_> {
    /// The problems the `wanted` checks find in `state`.
    pub(in crate::run) fn on_state(
        &mut self,
        step: &Step,
        state: &ErrorState,
        wanted: &[OnState],
    ) -> Vec<String> {
        let mut problems = Vec::new();
        for c in wanted {
            match c {
                OnState::Badblocks(BadblocksCheck {
                    target,
                    ranges,
                    exact,
                }) => {
                    let checked =
                        checks::check_badblocks(state, &self.layout, target, ranges, *exact);
                    self.note(step, checked.as_deref().unwrap_or("as expected"));
                    problems.extend(checked);
                }
                OnState::Cleared(ns) => {
                    problems.extend(checks::still_bad_after_clear(state, &self.layout, ns));
                }
            }
        }
        problems
    }
}
