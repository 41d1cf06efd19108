//! `touch` (spec: step/touch.rs): read every page of a window of a
//! mapping, counting the minor faults.

use super::{Acted, Broke};
use crate::case::step::TouchSpec;
use crate::case::Step;
use crate::run::failure::Failure;
use crate::run::CaseRun;

pub(super) fn touch<'s>(
    r: &mut CaseRun<'_>,
    step: &'s Step,
    spec: &TouchSpec,
    broke: &Broke,
) -> Result<Acted<'s>, Failure> {
    let TouchSpec {
        map,
        offset,
        length,
        cpu,
    } = spec;
    let (pages, faults) = r
        .guest
        .touch(map, *offset, *length, *cpu)
        .map_err(|e| broke(e.into()))?;
    r.note(step, format!("{pages} pages, {faults} minor faults"));
    let mut acted = Acted::default();
    if let Some(want) = step.faults.filter(|w| *w != faults) {
        acted.problems.push(format!(
            "expected {want} minor faults, got {faults} (touching {pages} pages)"
        ));
    }
    Ok(acted)
}
