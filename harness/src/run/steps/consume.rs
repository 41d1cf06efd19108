//! `consume` and `poison` (spec: step/consume.rs): a load of a poisoned
//! line (the poison model raises the machine check), and a software
//! poison of a page (madvise MADV_HWPOISON); each checks the signal.

use super::{Acted, Broke};
use crate::case::step::LineSpec;
use crate::case::Step;
use crate::guest::dax;
use crate::run::failure::Failure;
use crate::run::{start_poison, CaseRun};

impl CaseRun<'_> {
    pub(super) fn consume<'s>(
        &mut self,
        step: &'s Step,
        line: &LineSpec,
        broke: &Broke,
    ) -> Result<Acted<'s>, Failure> {
        // `consume` is a load of poison: it needs the model even on a
        // machine that did not ask for it.
        if self.poison.is_none() {
            let w = start_poison(self.guest, self.case, self.env, &self.layout, self.files)
                .map_err(|e| broke(format!("the poison model: {e}")))?;
            self.poison = Some(w);
        }
        let watcher = self.poison.as_ref().expect("started above");
        let done = dax::consume(
            self.guest,
            &self.layout,
            &self.maps,
            line,
            watcher,
            step.timeout,
        )
        .map_err(|e| broke(e.to_string()))?;
        self.note(step, format!("{}: {:?}", done.note, done.signal));
        let base = self.maps.get(&line.map).ok().map(|m| m.base);
        Ok(Acted {
            problems: step
                .signal
                .as_ref()
                .map(|e| e.check(done.signal.as_slice(), base))
                .unwrap_or_default(),
            ..Acted::default()
        })
    }

    pub(super) fn poison_page<'s>(
        &mut self,
        step: &'s Step,
        line: &LineSpec,
        broke: &Broke,
    ) -> Result<Acted<'s>, Failure> {
        let LineSpec { map, offset, cpu } = line;
        let signal = self
            .guest
            .poison(map, *offset, *cpu)
            .map_err(|e| broke(e.to_string()))?;
        self.note(step, format!("{signal:?}"));
        let base = self.maps.get(map).ok().map(|m| m.base);
        Ok(Acted {
            problems: step
                .signal
                .as_ref()
                .map(|e| e.check(signal.as_slice(), base))
                .unwrap_or_default(),
            ..Acted::default()
        })
    }
}
