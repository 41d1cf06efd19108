//! `put` (spec: step/put.rs): a file the case brings, into the guest.

use super::{Acted, Broke};
use crate::case::step::PutSpec;
use crate::case::Step;
use crate::guest::bring;
use crate::run::failure::Failure;
use crate::run::CaseRun;

pub(super) fn put<'s>(
    r: &mut CaseRun<'_>,
    step: &'s Step,
    spec: &PutSpec,
    broke: &Broke,
) -> Result<Acted<'s>, Failure> {
    let sent = bring::put(r.guest, spec, r.cache, step.timeout).map_err(broke)?;
    for (f, bytes) in &sent {
        r.note(
            step,
            format!("{} ({bytes} bytes) -> {}", f.host.display(), f.guest),
        );
    }
    Ok(Acted::default())
}
