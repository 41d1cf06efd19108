//! `cargo xtask lab --equivalence`: the selection cold, then with VM
//! snapshots, each case's first oracle observation compared between the
//! two. The comparison itself is the harness's (PMEM_LAB_EQUIVALENCE names
//! the cold run's events): a case whose restored guest differs fails there,
//! with the difference, like any other failure.

use crate::lab::{case_events, checked_args, harness, vm_env};
use crate::util::{Error, Result};
use crate::Options;
use pmem_lab_env::vars;
use serde_json::Value;

pub fn run(opts: &Options, filter: Option<&str>, runner_args: &[String]) -> Result<()> {
    opts.kernel()?;
    if opts.cold {
        return Err(Error::new(
            "--equivalence runs a cold pass and a pass with VM snapshots itself: drop --cold (and PMEM_LAB_COLD)",
        ));
    }
    let args = checked_args(opts, filter, runner_args)?;
    let reports = opts.workspace.join("target/pmem-lab/report/equivalence");
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
fn summary(events: &[Value]) -> String {
    let count = |f: &dyn Fn(&Value) -> bool| events.iter().filter(|e| f(e)).count();
    format!(
        "{} cases compared with the cold run ({} restored, {} cold and saved a snapshot, {} cold), {} not comparable (failed or skipped in either pass)",
        count(&|e| e["compared_with_cold"] == true),
        count(&|e| e["compared_with_cold"] == true && e["start"] == "restored"),
        count(&|e| e["compared_with_cold"] == true && e["start"] == "cold+saved"),
        count(&|e| e["compared_with_cold"] == true && e["start"] == "cold"),
        count(&|e| e["compared_with_cold"] != true),
    )
}

/// One row per case: status and start time in each pass.
fn markdown(cold: &[Value], snap: &[Value]) -> String {
    let mut out = String::from(
        "# Cold against VM snapshots\n\nEach case ran cold, then with VM snapshots; the second run compared its first oracle observation (every error-state view after setup, without the kernel log and namespace UUIDs) with the first's.\n\n",
    );
    out.push_str(&format!("{}\n\n", summary(snap)));
    out.push_str("| case | cold | agent ready (s) | with snapshots | start | agent ready (s) | compared |\n|---|---|---|---|---|---|---|\n");
    let secs = |e: &Value| {
        e["boot_ms"]
            .as_u64()
            .map(|ms| format!("{:.2}", ms as f64 / 1000.0))
            .unwrap_or_default()
    };
    for s in snap {
        let id = s["case"].as_str().unwrap_or_default();
        let c = cold
            .iter()
            .find(|c| c["case"] == id)
            .cloned()
            .unwrap_or(Value::Null);
        out.push_str(&format!(
            "| {id} | {} | {} | {} | {} | {} | {} |\n",
            c["status"].as_str().unwrap_or("-"),
            secs(&c),
            s["status"].as_str().unwrap_or("-"),
            s["start"].as_str().unwrap_or("-"),
            secs(s),
            if s["compared_with_cold"] == true {
                "equal"
            } else {
                "-"
            },
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_summary_counts_compared_cases_by_start() {
        let events = vec![
            json!({"case": "a", "status": "passed", "start": "restored", "compared_with_cold": true}),
            json!({"case": "b", "status": "passed", "start": "cold+saved", "compared_with_cold": true}),
            json!({"case": "c", "status": "failed", "compared_with_cold": false}),
        ];
        assert_eq!(
            summary(&events),
            "2 cases compared with the cold run (1 restored, 1 cold and saved a snapshot, 0 cold), 1 not comparable (failed or skipped in either pass)"
        );
        let md = markdown(
            &[json!({"case": "a", "status": "passed", "boot_ms": 2100})],
            &events,
        );
        assert!(
            md.contains("| a | passed | 2.10 | passed | restored |  | equal |"),
            "{md}"
        );
        assert!(md.contains("| c | - |  | failed | - |  | - |"), "{md}");
    }
}
