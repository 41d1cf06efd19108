//! `reconfigure` (spec: step/reconfigure.rs): a namespace's mode changed in
//! place, and the layout read again.

use super::{Acted, Broke};
use crate::case::step::ReconfigureSpec;
use crate::case::Step;
use crate::guest::setup;
use crate::run::failure::Failure;
use crate::run::CaseRun;

impl CaseRun<'_> {
    pub(super) fn reconfigure<'s>(
        &mut self,
        step: &'s Step,
        spec: &ReconfigureSpec,
        broke: &Broke,
    ) -> Result<Acted<'s>, Failure> {
        let info = setup::reconfigure(
            self.guest,
            self.case,
            &mut self.layout,
            &spec.namespace,
            spec.mode,
            spec.align,
        )
        .map_err(broke)?;
        let geometry = format!("{:?}", self.layout.geometry);
        self.note(step, format!("{info:?}; layout now {geometry}"));
        Ok(Acted::default())
    }
}
