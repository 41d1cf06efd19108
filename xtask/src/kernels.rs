//! One report for a run over several kernels: a row per case, a column per
//! kernel, each cell the case's outcome on that kernel (from the `case`
//! events of each kernel's events.jsonl, see harness/src/run/report.rs), and the
//! rows where the kernels differ listed first, since those are the findings.

use pmem_lab_env::events::{CaseEvent, Status};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One kernel's run.
pub struct Column {
    /// `debian-6.1`
    pub label: String,
    /// `6.1.192`
    pub release: String,
    /// Its `case` events.
    pub cases: Vec<CaseEvent>,
}

/// A case's cells, in column order (`None`: the case did not run there).
type Row<'c> = Vec<Option<(Status, Option<&'c str>)>>;

fn rows(columns: &[Column]) -> BTreeMap<&str, Row<'_>> {
    let mut rows: BTreeMap<&str, Row<'_>> = BTreeMap::new();
    for (i, col) in columns.iter().enumerate() {
        for c in &col.cases {
            let row = rows
                .entry(c.case.as_str())
                .or_insert_with(|| vec![None; columns.len()]);
            row[i] = Some((c.status, c.message.as_deref()));
        }
    }
    rows
}

/// The case statuses the harness reports, in report order.
const STATUSES: [Status; 4] = [
    Status::Passed,
    Status::Failed,
    Status::KnownFailure,
    Status::Ignored,
];

/// How many rows have `status` in column `i`.
fn count(rows: &BTreeMap<&str, Row<'_>>, i: usize, status: Status) -> usize {
    rows.values()
        .filter(|r| r[i].is_some_and(|c| c.0 == status))
        .count()
}

/// Whether a row's cells say different things.
fn differs(row: &Row<'_>) -> bool {
    let first = row[0].map(|c| c.0);
    row.iter().any(|c| c.map(|c| c.0) != first)
}

/// The report as Markdown: counts per kernel, the rows that differ (with the
/// first line of each non-passing message), then every row.
pub fn markdown(columns: &[Column]) -> String {
    let rows = rows(columns);
    let mut out = String::from("# Cases per kernel\n\n");
    let head: Vec<String> = columns
        .iter()
        .map(|c| format!("{} ({})", c.label, c.release))
        .collect();
    let _ = writeln!(out, "| | {} |", head.join(" | "));
    let _ = writeln!(out, "|---|{}", "---|".repeat(columns.len()));
    for status in STATUSES {
        let counts: Vec<String> = (0..columns.len())
            .map(|i| count(&rows, i, status).to_string())
            .collect();
        let _ = writeln!(out, "| {status} | {} |", counts.join(" | "));
    }
    let differing: Vec<(&&str, &Row<'_>)> = rows.iter().filter(|(_, r)| differs(r)).collect();
    let _ = writeln!(out, "\n## Where the kernels differ ({})\n", differing.len());
    for (id, row) in &differing {
        let _ = writeln!(out, "- `{id}`:");
        for (col, cell) in columns.iter().zip(row.iter()) {
            let text = match cell {
                None => "not run".to_string(),
                Some((status, None)) => status.to_string(),
                Some((status, Some(m))) => {
                    format!("{status}: {}", m.lines().next().unwrap_or_default())
                }
            };
            let _ = writeln!(out, "  - {}: {text}", col.label);
        }
    }
    let _ = writeln!(out, "\n## Every case\n");
    let _ = writeln!(
        out,
        "| case | {} |",
        columns
            .iter()
            .map(|c| c.label.as_str())
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(out, "|---|{}", "---|".repeat(columns.len()));
    for (id, row) in &rows {
        let cells: Vec<&str> = row.iter().map(|c| c.map_or("-", |c| c.0.name())).collect();
        let _ = writeln!(out, "| `{id}` | {} |", cells.join(" | "));
    }
    out
}

/// One line per kernel for the terminal, and how many rows differ.
pub fn summary(columns: &[Column]) -> String {
    let rows = rows(columns);
    let mut out = String::new();
    for (i, c) in columns.iter().enumerate() {
        let [passed, failed, known, ignored] = STATUSES.map(|s| count(&rows, i, s));
        let _ = writeln!(
            out,
            "[lab] {} ({}): {passed} passed, {failed} failed, {known} known failures, {ignored} ignored",
            c.label, c.release,
        );
    }
    let n = rows.values().filter(|r| differs(r)).count();
    let _ = write!(out, "[lab] {n} case(s) differ between the kernels");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(case: &str, status: Status, message: Option<&str>) -> CaseEvent {
        CaseEvent::new(case, status, message)
    }

    fn col(label: &str, cases: Vec<CaseEvent>) -> Column {
        Column {
            label: label.into(),
            release: format!("{}.0", label.trim_start_matches("debian-")),
            cases,
        }
    }

    #[test]
    fn rows_that_differ_come_first_with_their_reason() {
        let cols = [
            col(
                "debian-6.12",
                vec![
                    ev("a", Status::Passed, None),
                    ev("cxl/x", Status::Passed, None),
                ],
            ),
            col(
                "debian-6.1",
                vec![
                    ev("a", Status::Passed, None),
                    ev(
                        "cxl/x",
                        Status::Ignored,
                        Some("skipped: needs CONFIG_X\nmore"),
                    ),
                ],
            ),
        ];
        let md = markdown(&cols);
        assert!(
            md.contains("| | debian-6.12 (6.12.0) | debian-6.1 (6.1.0) |"),
            "{md}"
        );
        assert!(md.contains("| passed | 2 | 1 |"), "{md}");
        assert!(md.contains("| ignored | 0 | 1 |"), "{md}");
        assert!(md.contains("## Where the kernels differ (1)"), "{md}");
        assert!(
            md.contains("  - debian-6.1: ignored: skipped: needs CONFIG_X\n"),
            "{md}"
        );
        assert!(!md.contains("- `a`:"), "{md}");
        assert!(md.contains("| `cxl/x` | passed | ignored |"), "{md}");
        let s = summary(&cols);
        assert!(
            s.contains("[lab] debian-6.1 (6.1.0): 1 passed, 0 failed, 0 known failures, 1 ignored"),
            "{s}"
        );
        assert!(s.ends_with("1 case(s) differ between the kernels"), "{s}");
    }

    #[test]
    fn a_case_missing_on_one_kernel_differs() {
        let cols = [
            col("debian-6.12", vec![ev("a", Status::Passed, None)]),
            col("debian-6.1", vec![]),
        ];
        assert!(markdown(&cols).contains("  - debian-6.1: not run"));
    }
}
