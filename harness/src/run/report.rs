//! Machine-readable results for CI: a JSON-lines event stream written as
//! things happen (`events.jsonl`: one line per step and per case, with status,
//! timing and failure message) and a JUnit XML file at the end
//! (`junit.xml`, via quick-junit, the crate nextest uses).

pub use pmem_lab_env::events::RunEvent as RunInfo;
use pmem_lab_env::events::{self, CaseEvent, Event, Start, Status, StepEvent};
use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
use serde_json::Value;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Passed,
    Failed(String),
    Ignored(String),
    /// Listed in cases/known-failures.yaml and failed as expected.
    KnownFailure(String),
}

impl Outcome {
    pub fn status(&self) -> Status {
        match self {
            Outcome::Passed => Status::Passed,
            Outcome::Failed(_) => Status::Failed,
            Outcome::Ignored(_) => Status::Ignored,
            Outcome::KnownFailure(_) => Status::KnownFailure,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CaseRecord {
    pub id: String,
    pub outcome: Outcome,
    pub duration: Duration,
    /// QEMU start to agent ready.
    pub boot: Option<Duration>,
    /// Preparing the lab's ACPI tables, when the machine has them.
    pub acpi_tables: Option<Duration>,
    /// A failure's class (see `Failure::class`).
    pub class: Option<String>,
    /// How a passed case's VM started.
    pub start: Option<Start>,
    /// A passed case's first oracle observation as the equivalence check
    /// compares it (`cargo xtask lab --equivalence`).
    pub setup_view: Option<Value>,
    /// Whether it was compared with a cold run's (PMEM_LAB_EQUIVALENCE).
    pub compared_with_cold: bool,
}

/// Where reports go and what has been recorded so far.
#[derive(Debug)]
pub struct Reporter {
    dir: PathBuf,
    events: Mutex<File>,
    cases: Mutex<Vec<CaseRecord>>,
    run: RunInfo,
}

/// Why a report could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{}: {source}", path.display())]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("JUnit: {0}")]
    Junit(#[from] quick_junit::SerializeError),
}

fn file(path: &Path) -> impl FnOnce(std::io::Error) -> ReportError + '_ {
    move |source| ReportError::File {
        path: path.to_path_buf(),
        source,
    }
}

impl Reporter {
    /// Start a report in `dir` (events.jsonl is truncated).
    pub fn create(dir: &Path, run: RunInfo) -> Result<Reporter, ReportError> {
        fs::create_dir_all(dir).map_err(file(dir))?;
        let path = dir.join("events.jsonl");
        let events = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .map_err(file(&path))?;
        let reporter = Reporter {
            dir: dir.to_path_buf(),
            events: Mutex::new(events),
            cases: Mutex::new(Vec::new()),
            run,
        };
        reporter.event(&Event::Run(reporter.run.clone()));
        Ok(reporter)
    }

    /// One event line; lines from parallel cases never interleave.
    fn event(&self, event: &Event) {
        let line = event.to_line();
        let _ = self.events.lock().unwrap().write_all(line.as_bytes());
    }

    pub fn step(
        &self,
        case: &str,
        number: usize,
        name: &str,
        duration: Duration,
        failure: Option<&str>,
    ) {
        self.event(&Event::Step(StepEvent {
            case: case.to_string(),
            step: number,
            name: name.to_string(),
            status: match failure {
                Some(_) => Status::Failed,
                None => Status::Passed,
            },
            duration_ms: duration.as_millis() as u64,
            message: failure.map(str::to_string),
        }));
    }

    pub fn case(&self, record: CaseRecord) {
        let message = match &record.outcome {
            Outcome::Passed => None,
            Outcome::Failed(m) | Outcome::Ignored(m) | Outcome::KnownFailure(m) => Some(m.clone()),
        };
        self.event(&Event::Case(CaseEvent {
            case: record.id.clone(),
            status: record.outcome.status(),
            duration_ms: record.duration.as_millis() as u64,
            boot_ms: record.boot.map(|b| b.as_millis() as u64),
            acpi_tables_ms: record.acpi_tables.map(|t| t.as_millis() as u64),
            message,
            class: record.class.clone(),
            start: record.start,
            setup_view: record.setup_view.clone(),
            compared_with_cold: record.compared_with_cold,
        }));
        self.cases.lock().unwrap().push(record);
    }

    /// Write junit.xml; returns its path.
    pub fn finish(&self) -> Result<PathBuf, ReportError> {
        let path = self.dir.join("junit.xml");
        let xml = junit(&self.run, &self.cases.lock().unwrap())?;
        fs::write(&path, xml).map_err(file(&path))?;
        Ok(path)
    }
}

/// The first oracle observations of a run's passed cases, by case id, from
/// its events.jsonl (see [`Reporter::case`]).
pub fn setup_views(path: &Path) -> Result<std::collections::HashMap<String, Value>, ReportError> {
    if !path.is_file() {
        return Err(file(path)(std::io::ErrorKind::NotFound.into()));
    }
    Ok(events::cases(path)
        .into_iter()
        .filter(|e| e.status == Status::Passed)
        .filter_map(|e| Some((e.case, e.setup_view.filter(|v| !v.is_null())?)))
        .collect())
}

/// The JUnit document for these cases (one suite, `pmem-lab`).
pub fn junit(run: &RunInfo, cases: &[CaseRecord]) -> Result<String, ReportError> {
    let mut suite = TestSuite::new("pmem-lab");
    suite.add_property(("kernel", run.kernel.as_str()));
    suite.add_property(("qemu", run.qemu.as_str()));
    suite.add_property(("accel", run.accel.as_str()));
    for c in cases {
        let status = match &c.outcome {
            Outcome::Passed => TestCaseStatus::success(),
            Outcome::Failed(m) => {
                let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                s.set_message(m.lines().next().unwrap_or_default().to_string());
                s.set_description(m.clone());
                s
            }
            Outcome::Ignored(m) | Outcome::KnownFailure(m) => {
                let mut s = TestCaseStatus::skipped();
                s.set_message(m.clone());
                s
            }
        };
        let mut tc = TestCase::new(c.id.clone(), status);
        tc.set_time(c.duration);
        suite.add_test_case(tc);
    }
    let mut report = Report::new("pmem-lab");
    report.add_test_suite(suite);
    Ok(report.to_string()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, outcome: Outcome) -> CaseRecord {
        CaseRecord {
            id: id.into(),
            outcome,
            duration: Duration::from_millis(1500),
            boot: Some(Duration::from_secs(2)),
            acpi_tables: None,
            class: None,
            start: None,
            setup_view: None,
            compared_with_cold: false,
        }
    }

    #[test]
    fn junit_counts_failures_and_skips() {
        let xml = junit(
            &RunInfo::default(),
            &[
                rec("a", Outcome::Passed),
                rec(
                    "b",
                    Outcome::Failed("step 2 `x` failed:\n  - expected exit 0".into()),
                ),
                rec("c", Outcome::KnownFailure("kernel bug".into())),
            ],
        )
        .unwrap();
        assert!(
            xml.contains(r#"tests="3""#)
                && xml.contains(r#"failures="1""#)
                && xml.contains(r#"skipped="1""#),
            "{xml}"
        );
        assert!(
            xml.contains(r#"<failure message="step 2 `x` failed:""#),
            "{xml}"
        );
    }

    #[test]
    fn events_are_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunInfo {
            kernel: "6.12.117".into(),
            qemu: "7.2.22".into(),
            accel: "tcg".into(),
        };
        let r = Reporter::create(dir.path(), run).unwrap();
        r.step("a", 1, "run", Duration::from_millis(5), None);
        r.case(rec("a", Outcome::Passed));
        let text = fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        // The run first: what every case of it used.
        assert_eq!(lines[0]["type"], "run");
        assert_eq!(lines[0]["qemu"], "7.2.22");
        assert_eq!(lines[1]["type"], "step");
        assert_eq!(lines[2]["status"], "passed");
        assert_eq!(lines[2]["boot_ms"], 2000);
        let xml = fs::read_to_string(r.finish().unwrap()).unwrap();
        assert!(
            xml.contains(r#"<property name="qemu" value="7.2.22"/>"#),
            "{xml}"
        );
    }
}
