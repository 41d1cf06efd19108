//! `map` and `unmap` (spec: step/map.rs): named device-dax mappings in the
//! agent.

use super::{Acted, Broke};
use crate::case::step::MapSpec;
use crate::guest::dax;
use crate::run::failure::Failure;
use crate::run::CaseRun;

impl CaseRun<'_> {
    pub(super) fn map<'s>(&mut self, spec: &MapSpec, broke: &Broke) -> Result<Acted<'s>, Failure> {
        dax::map(self.guest, &self.layout, &mut self.maps, spec)
            .map_err(|e| broke(e.to_string()))?;
        Ok(Acted::default())
    }

    pub(super) fn unmap<'s>(&mut self, name: &str, broke: &Broke) -> Result<Acted<'s>, Failure> {
        dax::unmap(self.guest, &mut self.maps, name).map_err(|e| broke(e.to_string()))?;
        Ok(Acted::default())
    }
}
