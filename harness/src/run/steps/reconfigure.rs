//! `reconfigure` (spec: step/reconfigure.rs): a namespace's mode changed in
//! place, and the layout read again.

use super::{Acted, Broke};
use crate::case::step::ReconfigureSpec;
use crate::case::Step;
use crate::guest::setup;
use crate::run::failure::Failure;
use crate::run::CaseRun;

pub(super) fn reconfigure<'s>(
    r: &mut CaseRun<'_>,
    step: &'s Step,
    spec: &ReconfigureSpec,
    broke: &Broke,
) -> Result<Acted<'s>, Failure> {
    let info = setup::reconfigure(
        r.guest,
        r.case,
        &mut r.layout,
        &spec.namespace,
        spec.mode,
        spec.align,
    )
    .map_err(broke)?;
    let geometry = format!("{:?}", r.layout.geometry);
    r.note(step, format!("{info:?}; layout now {geometry}"));
    Ok(Acted::default())
}
