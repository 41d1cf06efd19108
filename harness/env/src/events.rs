//! events.jsonl, the lab's machine-readable results: one JSON object per
//! line, written by the harness as things happen (harness/src/run/report.rs)
//! and read by xtask (the bench, bisect, `--equivalence`, the report across
//! kernels). One typed schema for both sides: a field renamed or a status
//! added on one side does not compile on the other.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// One line of events.jsonl.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// What the whole run used (the first line).
    Run(RunEvent),
    /// A step ended.
    Step(StepEvent),
    /// A case ended.
    Case(CaseEvent),
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RunEvent {
    pub kernel: String,
    pub qemu: String,
    pub accel: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepEvent {
    pub case: String,
    pub step: usize,
    pub name: String,
    pub status: Status,
    pub duration_ms: u64,
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseEvent {
    pub case: String,
    pub status: Status,
    pub duration_ms: u64,
    /// QEMU start to agent ready (booted or restored).
    pub boot_ms: Option<u64>,
    /// Preparing the lab's ACPI tables, when the machine has them.
    pub acpi_tables_ms: Option<u64>,
    /// Why it failed, was skipped or is a known failure.
    pub message: Option<String>,
    /// A failure's class (the harness's `Failure::class`).
    pub class: Option<String>,
    /// How a passed case's VM started.
    pub start: Option<Start>,
    /// A passed case's first oracle observation, as `--equivalence`
    /// compares it.
    #[serde(default)]
    pub setup_view: Option<serde_json::Value>,
    /// Whether it was compared with a cold run's (PMEM_LAB_EQUIVALENCE).
    #[serde(default)]
    pub compared_with_cold: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Passed,
    Failed,
    Ignored,
    /// Listed in cases/known-failures.yaml and failed as expected.
    KnownFailure,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Passed => "passed",
            Status::Failed => "failed",
            Status::Ignored => "ignored",
            Status::KnownFailure => "known-failure",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl CaseEvent {
    /// A case's event with nothing but its id, status and message (the
    /// rest unknown): what tests and reports that only count need.
    pub fn new(case: &str, status: Status, message: Option<&str>) -> CaseEvent {
        CaseEvent {
            case: case.to_string(),
            status,
            duration_ms: 0,
            boot_ms: None,
            acpi_tables_ms: None,
            message: message.map(str::to_string),
            class: None,
            start: None,
            setup_view: None,
            compared_with_cold: false,
        }
    }
}

/// How a case's VM started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Start {
    /// Booted (no snapshot for this machine).
    #[serde(rename = "cold")]
    Cold,
    /// Booted, and its snapshot saved after setup for the next case.
    #[serde(rename = "cold+saved")]
    ColdAndSaved,
    /// Restored from a VM snapshot.
    #[serde(rename = "restored")]
    Restored,
}

impl Start {
    pub const ALL: [Start; 3] = [Start::Cold, Start::ColdAndSaved, Start::Restored];

    pub fn name(self) -> &'static str {
        match self {
            Start::Cold => "cold",
            Start::ColdAndSaved => "cold+saved",
            Start::Restored => "restored",
        }
    }
}

impl std::fmt::Display for Start {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Event {
    /// The line events.jsonl holds for it.
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).expect("events serialize");
        line.push('\n');
        line
    }
}

/// The events of an events.jsonl; none when there is no such file (the
/// harness wrote no report). A line that is not an event (a report of an
/// older lab, a truncated last line) is left out.
pub fn read(path: &Path) -> Vec<Event> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The `case` events of an events.jsonl.
pub fn cases(path: &Path) -> Vec<CaseEvent> {
    read(path)
        .into_iter()
        .filter_map(|e| match e {
            Event::Case(c) => Some(c),
            Event::Run(_) | Event::Step(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lines_keep_their_names() {
        let case = Event::Case(CaseEvent {
            case: "a/b".into(),
            status: Status::KnownFailure,
            duration_ms: 5,
            boot_ms: Some(1),
            acpi_tables_ms: None,
            message: Some("m".into()),
            class: None,
            start: Some(Start::ColdAndSaved),
            setup_view: None,
            compared_with_cold: false,
        });
        let line = case.to_line();
        assert!(
            line.starts_with(r#"{"type":"case","case":"a/b","status":"known-failure""#),
            "{line}"
        );
        assert!(line.contains(r#""start":"cold+saved""#), "{line}");
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), case);
        let step: Event = serde_json::from_str(
            r#"{"type":"step","case":"c","step":2,"name":"n","status":"failed","duration_ms":9,"message":"why"}"#,
        )
        .unwrap();
        assert!(matches!(
            step,
            Event::Step(StepEvent {
                step: 2,
                status: Status::Failed,
                ..
            })
        ));
        for s in Start::ALL {
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
    }

    #[test]
    fn a_file_with_other_lines_gives_its_events() {
        let dir = std::env::temp_dir().join(format!("pmem-lab-events-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("events.jsonl");
        let run = Event::Run(RunEvent::default()).to_line();
        std::fs::write(
            &path,
            format!("{run}not json\n{{\"type\":\"case\",\"case\":\"x\",\"status\":\"passed\",\"duration_ms\":1,\"boot_ms\":null,\"acpi_tables_ms\":null,\"message\":null,\"class\":null,\"start\":\"restored\"}}\n{{\"type\":\"case\""),
        )
        .unwrap();
        let cases = cases(&path);
        assert_eq!(cases.len(), 1, "{cases:?}");
        assert_eq!(cases[0].start, Some(Start::Restored));
        assert_eq!(read(&path).len(), 2);
        assert!(read(&dir.join("absent")).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
