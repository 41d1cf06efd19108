//! `consume` and `poison` (spec: step/consume.rs): a load of a poisoned
//! line (the poison model raises the machine check), and a software
//! poison of a page (madvise MADV_HWPOISON); each checks the signal.

use super::{Acted, Broke};
use crate::case::step::LineSpec;
use crate::case::Step;
use crate::guest::dax;
use crate::run::failure::Failure;
use crate::run::{start_poison, CaseRun};

pub(super) fn consume<'s>(
    r: &mut CaseRun<'_>,
    step: &'s Step,
    line: &LineSpec,
    broke: &Broke,
) -> Result<Acted<'s>, Failure> {
    // `consume` is a load of poison: it needs the model even on a
    // machine that did not ask for it.
    if r.poison.is_none() {
        let w = start_poison(r.guest, r.case, r.env, &r.layout, r.files)
            .map_err(broke)?;
        r.poison = Some(w);
    }
    let watcher = r.poison.as_ref().expect("started above");
    let done = dax::consume(
        r.guest,
        &r.layout,
        &r.maps,
        line,
        watcher,
        step.timeout,
    )
    .map_err(broke)?;
    r.note(step, format!("{}: {:?}", done.note, done.signal));
    let base = r.maps.get(&line.map).ok().map(|m| m.base);
    Ok(Acted::signals(step, done.signal.as_slice(), base))
}

pub(super) fn poison<'s>(
    r: &mut CaseRun<'_>,
    step: &'s Step,
    line: &LineSpec,
    broke: &Broke,
) -> Result<Acted<'s>, Failure> {
    let LineSpec { map, offset, cpu } = line;
    let signal = r
        .guest
        .poison(map, *offset, *cpu)
        .map_err(|e| broke(e.into()))?;
    r.note(step, format!("{signal:?}"));
    let base = r.maps.get(map).ok().map(|m| m.base);
    Ok(Acted::signals(step, signal.as_slice(), base))
}
