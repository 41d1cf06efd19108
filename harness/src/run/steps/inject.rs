//! `inject` (spec: step/inject.rs): a machine check at a case location,
//! and the poison model told of the line.

use super::{Acted, Broke};
use crate::case::step::InjectAt;
use crate::case::Step;
use crate::guest::inject;
use crate::run::failure::Failure;
use crate::run::CaseRun;
use crate::vm::poison::LINE;

pub(super) fn inject<'s>(
    r: &mut CaseRun<'_>,
    step: &'s Step,
    spec: &InjectAt,
    broke: &Broke,
) -> Result<Acted<'s>, Failure> {
    let cpus = r.case.machine.cpus;
    let done = inject::inject(r.guest, &r.layout, spec, cpus, step.timeout)
        .map_err(broke)?;
    r.note(step, done.describe());
    if let Some(w) = &r.poison {
        w.poison(vec![(done.resolved.gpa, LINE)])
            .map_err(|e| broke(e.into()))?;
    }
    Ok(Acted::default())
}
