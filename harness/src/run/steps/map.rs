//! `map` and `unmap` (spec: step/map.rs): named device-dax mappings in the
//! agent.

use super::{Acted, Broke};
use crate::case::step::MapSpec;
use crate::case::Step;
use crate::guest::dax;
use crate::run::failure::Failure;
use crate::run::CaseRun;

pub(super) fn map<'s>(
    r: &mut CaseRun<'_>,
    _step: &'s Step,
    spec: &MapSpec,
    broke: &Broke,
) -> Result<Acted<'s>, Failure> {
    dax::map(r.guest, &r.layout, &mut r.maps, spec)
        .map_err(broke)?;
    Ok(Acted::default())
}

pub(super) fn unmap<'s>(
    r: &mut CaseRun<'_>,
    _step: &'s Step,
    name: &str,
    broke: &Broke,
) -> Result<Acted<'s>, Failure> {
    dax::unmap(r.guest, &mut r.maps, name).map_err(broke)?;
    Ok(Acted::default())
}
