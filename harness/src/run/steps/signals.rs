//! `signals` and `mce_kill` (spec: step/signals.rs): the SIGBUS signals
//! the agent itself received, and its PR_MCE_KILL policy.

use super::{Acted, Broke};
use crate::case::step::MceKillPolicy;
use crate::case::Step;
use crate::run::failure::Failure;
use crate::run::CaseRun;
use std::time::Duration;

pub(super) fn signals<'s>(
    r: &mut CaseRun<'_>,
    step: &'s Step,
    wait: &Duration,
    broke: &Broke,
) -> Result<Acted<'s>, Failure> {
    let got = r.guest.signals(*wait).map_err(|e| broke(e.into()))?;
    r.note(step, format!("{got:?}"));
    let base = got
        .first()
        .and_then(|s| r.maps.containing(s.addr))
        .map(|m| m.base);
    Ok(Acted::signals(step, &got, base))
}

pub(super) fn mce_kill<'s>(
    r: &mut CaseRun<'_>,
    _step: &'s Step,
    policy: &MceKillPolicy,
    broke: &Broke,
) -> Result<Acted<'s>, Failure> {
    r.guest
        .mce_kill(policy.name())
        .map_err(|e| broke(e.into()))?;
    Ok(Acted::default())
}
