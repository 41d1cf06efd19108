//! `inject_error`, `scrub` and `clear` (spec: step/ndctl.rs): ndctl's own
//! error commands.

use super::{Acted, Broke, OnState};
use crate::badblocks;
use crate::case::{NdctlOp, Step};
use crate::observe::checks;
use crate::run::failure::Failure;
use crate::guest::{Absent, GuestError};
use crate::run::CaseRun;
use pmem_lab_proto::RunRequest;

// The three kinds share one executor.
pub(super) use self::ndctl as clear;
pub(super) use self::ndctl as inject_error;
pub(super) use self::ndctl as scrub;

/// An argv from the op (a scrub started first), the result checked, a
/// clear's "nothing left" asked of the state after it.
pub(super) fn ndctl<'s>(
    r: &mut CaseRun<'_>,
    step: &'s Step,
    op: &NdctlOp,
    broke: &Broke,
) -> Result<Acted<'s>, Failure> {
    let mut acted = Acted::default();
    if let NdctlOp::Scrub { bus } = op {
        let start = RunRequest {
            argv: vec!["ndctl".into(), "start-scrub".into(), bus.clone()],
            timeout_ms: step.timeout.as_millis() as u64,
            ..Default::default()
        };
        let started = r.command(step, broke, start, &mut acted.details)?;
        if started.exit_code != Some(0) {
            acted.problems.push(format!(
                "`ndctl start-scrub {bus}` failed ({})",
                started.status_text()
            ));
        }
    }
    let op = &r.resolve_file_block(op).map_err(broke)?;
    let layout = &r.layout;
    let argv = op.argv(|ns| {
        layout
            .namespaces
            .get(ns)
            .map(|n| n.dev.clone())
            .unwrap_or_default()
    });
    let req = RunRequest {
        argv,
        timeout_ms: step.timeout.as_millis() as u64,
        ..Default::default()
    };
    let result = r.command(step, broke, req, &mut acted.details)?;
    acted.problems.extend(step.expect.check(&result));
    match (op, result.exit_code) {
        (NdctlOp::Scrub { bus }, Some(0)) => {
            acted
                .problems
                .extend(checks::scrub_not_idle(bus, &result.stdout));
        }
        (NdctlOp::Clear { namespace, .. }, Some(0)) => {
            acted.on_state.push(OnState::Cleared(namespace.clone()));
        }
        _ => {}
    }
    Ok(acted)
}

impl CaseRun<'_> {
    /// An inject_error aimed at a file byte: find the block with FIEMAP. The
    /// extent's physical offset counts from the block device's first byte,
    /// which is the namespace's data start, the frame of ndctl's --block.
    fn resolve_file_block(&mut self, op: &NdctlOp) -> Result<NdctlOp, GuestError> {
        let NdctlOp::InjectError {
            file: Some((path, offset)),
            ..
        } = op
        else {
            return Ok(op.clone());
        };
        let extents = self
            .guest
            .fiemap(path)
            .map_err(|e| GuestError::from(e).context(format!("FIEMAP {path}")))?;
        let e = extents
            .iter()
            .find(|e| e.logical <= *offset && *offset < e.logical + e.length)
            .ok_or_else(|| {
                GuestError::Missing(Absent::Extent, format!(
                    "byte {offset:#x} of {path} is not allocated (extents {extents:?})"
                ))
            })?;
        let block = (e.physical + (offset - e.logical)) / badblocks::SECTOR;
        self.log.line(format!(
            "--- {path} byte {offset:#x} is namespace data block {block} (extents {extents:?})"
        ));
        let mut resolved = op.clone();
        if let NdctlOp::InjectError { block: b, file, .. } = &mut resolved {
            *b = block;
            *file = None;
        }
        Ok(resolved)
    }
}
