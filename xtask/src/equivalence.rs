//! `cargo xtask lab --equivalence`: the selection cold, then with VM
//! snapshots, each case's first oracle observation compared between the
//! two. The comparison itself is the harness's (PMEM_LAB_EQUIVALENCE names
//! the cold run's events): a case whose restored guest differs fails there,
//! with the difference, like any other failure.

use crate::lab::{case_events, checked_args, harness, vm_env};
use crate::util::{Error, Result};
use crate::Options;
use pmem_lab_env::events::{CaseEvent, Start};
use pmem_lab_env::vars;

pub fn run(opts: &Options, filter: Option<&str>, runner_args: &[String]) -> Result<()> {
    opts.kernel()?;
    if opts.cold {
        return Err(Error::new(
            "--equivalence runs a cold pass and a pass with VM snapshots itself: drop --cold (and PMEM_LAB_COLD)",
        ));
    }
    let args = checked_args(opts, filter, runner_args)?;
    let reports = pmem_lab_env::report_dir(&opts.artifacts).join("equivalence");
    let _ = std::fs::remove_dir_all(&reports);
    let mut passes = Vec::new();
    for (name, cold) in [("cold", true), ("snapshots", false)] {
        eprintln!("[lab] === equivalence: {name} pass");
        let mut o = opts.clone();
        o.cold = cold;
        o.artifacts = opts.artifacts.join(name);
        let dir = reports.join(name);
        let mut env = vm_env(&o)?;
        env.push((vars::REPORT.name, dir.display().to_string()));
        if !cold {
            let events = reports.join("cold/events.jsonl");
            env.push((vars::EQUIVALENCE.name, events.display().to_string()));
        }
        let ok = harness(&o, &env, &args)?;
        passes.push((name, ok, case_events(&dir)));
    }
    let summary = summary(&passes[1].2);
    let path = reports.join("equivalence.md");
    std::fs::write(&path, markdown(&passes[0].2, &passes[1].2))?;
    eprintln!("[lab] equivalence: {summary}; {}", path.display());
    let failed: Vec<&str> = passes.iter().filter(|p| !p.1).map(|p| p.0).collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::new(format!(
            "the {} pass failed (a difference from the cold run fails its case with `equivalence:`); artifacts under {}",
            failed.join(" and "),
            opts.artifacts.display()
        )))
    }
}

/// How the snapshot pass's cases started and how many were compared.
fn summary(events: &[CaseEvent]) -> String {
    let compared = |start: Option<Start>| {
        events
            .iter()
            .filter(|e| e.compared_with_cold && start.is_none_or(|s| e.start == Some(s)))
            .count()
    };
    format!(
        "{} cases compared with the cold run ({} restored, {} cold and saved a snapshot, {} cold), {} not comparable (failed or skipped in either pass)",
        compared(None),
        compared(Some(Start::Restored)),
        compared(Some(Start::ColdAndSaved)),
        compared(Some(Start::Cold)),
        events.iter().filter(|e| !e.compared_with_cold).count(),
    )
}

/// One row per case: status and start time in each pass.
fn markdown(cold: &[CaseEvent], snap: &[CaseEvent]) -> String {
    let mut out = String::from(
        "# Cold against VM snapshots\n\nEach case ran cold, then with VM snapshots; the second run compared its first oracle observation (every error-state view after setup, without the kernel log and namespace UUIDs) with the first's.\n\n",
    );
    out.push_str(&format!("{}\n\n", summary(snap)));
    out.push_str("| case | cold | agent ready (s) | with snapshots | start | agent ready (s) | compared |\n|---|---|---|---|---|---|---|\n");
    let secs = |e: Option<&CaseEvent>| {
        e.and_then(|e| e.boot_ms)
            .map(|ms| format!("{:.2}", ms as f64 / 1000.0))
            .unwrap_or_default()
    };
    for s in snap {
        let c = cold.iter().find(|c| c.case == s.case);
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            s.case,
            c.map_or("-", |c| c.status.name()),
            secs(c),
            s.status,
            s.start.map_or("-", Start::name),
            secs(Some(s)),
            if s.compared_with_cold { "equal" } else { "-" },
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use pmem_lab_env::events::Status;

    fn ev(case: &str, status: Status, start: Option<Start>, compared: bool) -> CaseEvent {
        CaseEvent {
            start,
            compared_with_cold: compared,
            ..CaseEvent::new(case, status, None)
        }
    }

    #[test]
    fn the_summary_counts_compared_cases_by_start() {
        let events = vec![
            ev("a", Status::Passed, Some(Start::Restored), true),
            ev("b", Status::Passed, Some(Start::ColdAndSaved), true),
            ev("c", Status::Failed, None, false),
        ];
        assert_eq!(
            summary(&events),
            "2 cases compared with the cold run (1 restored, 1 cold and saved a snapshot, 0 cold), 1 not comparable (failed or skipped in either pass)"
        );
        let md = markdown(
            &[CaseEvent {
                boot_ms: Some(2100),
                ..ev("a", Status::Passed, None, false)
            }],
            &events,
        );
        assert!(
            md.contains("| a | passed | 2.10 | passed | restored |  | equal |"),
            "{md}"
        );
        assert!(md.contains("| c | - |  | failed | - |  | - |"), "{md}");
    }
}
