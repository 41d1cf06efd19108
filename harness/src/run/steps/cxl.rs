//! `cxl_inject_poison` and `expect_cxl_poison` (spec: step/cxl.rs).

use super::{Acted, Broke};
use crate::case::step::{CxlPoisonAt, CxlPoisonCheck};
use crate::case::Step;
use crate::guest::cxl;
use crate::run::failure::Failure;
use crate::guest::GuestError;
use crate::run::CaseRun;
use crate::vm::machine;
use crate::vm::poison::LINE;
use serde_json::json;

pub(super) fn cxl_inject_poison<'s>(
    r: &mut CaseRun<'_>,
    step: &'s Step,
    at: &CxlPoisonAt,
    broke: &Broke,
) -> Result<Acted<'s>, Failure> {
    let path = format!("/machine/peripheral/{}", machine::cxl_device_id(at.device));
    let args = json!({"path": path, "start": at.dpa, "length": at.length});
    r.guest
        .vm()
        .qmp("cxl-inject-poison", Some(args), step.timeout)
        .map_err(|e| broke(GuestError::from(e).context("QMP cxl-inject-poison")))?;
    // Where the poisoned lines sit in host physical memory, line by line
    // (an interleave spreads a DPA range).
    let lines: Vec<(u64, u64)> = (at.dpa..at.dpa + at.length)
        .step_by(LINE as usize)
        .filter_map(|dpa| r.layout.cxl.hpa(at.device, dpa))
        .map(|(_, hpa)| (hpa, LINE))
        .collect();
    let hpa = match lines.first() {
        Some((hpa, _)) => format!("{hpa:#x} ({} line(s))", lines.len()),
        None => "none (no region maps it)".to_string(),
    };
    r.note(
        step,
        format!(
            "QMP cxl-inject-poison {path} DPA {:#x} length {:#x}; host physical {hpa}",
            at.dpa, at.length
        ),
    );
    // The poison model learns the lines from the device's list, read
    // after this step (see `observe`).
    Ok(Acted::default())
}

pub(super) fn expect_cxl_poison<'s>(
    r: &mut CaseRun<'_>,
    _step: &'s Step,
    check: &CxlPoisonCheck,
    broke: &Broke,
) -> Result<Acted<'s>, Failure> {
    let memdev = r.layout.cxl.memdevs[check.device].clone();
    let got = cxl::poison_list(r.guest, &memdev).map_err(broke)?;
    let mut acted = Acted::default();
    acted.details.push_str(&format!(
        "{memdev} poison list: {}\n",
        got.iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    ));
    acted
        .problems
        .extend(cxl::check_list(check, &got, &r.layout.cxl));
    Ok(acted)
}
