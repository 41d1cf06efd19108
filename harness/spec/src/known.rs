//! The known-failure list (`known-failures.yaml` at the workspace root):
//! cases or matrix cells expected to fail, with a reason and the kernels it
//! applies to. A listed case that fails is reported as a known failure and
//! does not fail the run; one that passes is reported as an unexpected pass
//! and does, so the list never outlives the bug.
//!
//! ```yaml
//! - case: clear/fsdax-s7            # exact id, or a prefix ending in `*`
//!   reason: recovery write fails under nfit_test (see the case)
//!   kernel: ">=6.12, <6.14"         # optional: every kernel
//! ```
//!
//! It is read like a case file (a regular file of at most 256 KiB, the same
//! parser limits) and checked like one: every problem with file:line:col,
//! ranges parsed into [`KernelRange`], a range no kernel is in refused, and
//! an entry that names no case of the tree refused.

use crate::case::load::{parse_error, read_bounded, snippet, yaml_options};
use crate::case::CaseError;
use serde::Deserialize;
use serde_saphyr::{Location, Spanned};
use std::cmp::Ordering;
use std::fmt;
use std::path::Path;

/// One entry of the list, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct KnownFailure {
    pub case: String,
    pub reason: String,
    /// Every kernel when absent.
    pub kernel: Option<KernelRange>,
}

impl KnownFailure {
    /// Does this entry cover case `id` on kernel `release`?
    pub fn covers(&self, id: &str, release: &str) -> bool {
        pattern_covers(&self.case, id)
            && self
                .kernel
                .as_ref()
                .is_none_or(|range| range.contains(&Version::of_release(release)))
    }
}

fn pattern_covers(pattern: &str, id: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => id.starts_with(prefix),
        None => id == pattern,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    case: Spanned<String>,
    reason: Spanned<String>,
    #[serde(default)]
    kernel: Option<Spanned<String>>,
}

/// A kernel version: `6.12.117` as [6, 12, 117]; compared on the
/// precision of the longer one, the shorter padded with zeros.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version(Vec<u64>);

impl Version {
    /// A kernel release (`6.12.117-rc1+`): its leading dotted numbers.
    pub fn of_release(release: &str) -> Version {
        Version(
            release
                .split(|c: char| !c.is_ascii_digit() && c != '.')
                .next()
                .unwrap_or("")
                .split('.')
                .map_while(|p| p.parse().ok())
                .collect(),
        )
    }

    /// A bound's version: one to four dotted numbers, nothing else.
    fn parse(text: &str) -> Result<Version, RangeError> {
        let parts: Vec<&str> = text.split('.').collect();
        if parts.len() > 4
            || parts
                .iter()
                .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.len() > 9)
        {
            return Err(RangeError::Version(text.to_string()));
        }
        Ok(Version(
            parts.iter().map(|p| p.parse().unwrap_or(0)).collect(),
        ))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        let n = self.0.len().max(other.0.len());
        let at = |v: &Version, i: usize| v.0.get(i).copied().unwrap_or(0);
        (0..n)
            .map(|i| at(self, i).cmp(&at(other, i)))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(u64::to_string).collect();
        write!(f, "{}", parts.join("."))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
}

/// Why a text is not a kernel range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RangeError {
    #[error("an empty kernel range: leave `kernel` out to mean every kernel")]
    Empty,
    #[error("`{0}` is not a kernel version: write dotted numbers, e.g. 6.12 or 6.12.117")]
    Version(String),
    #[error("kernel range part `{part}`: start with <, <=, >, >= or =, e.g. `>=6.12` or `<6.14`")]
    NoOperator { part: String },
    #[error("kernel range part `{part}`: {source}")]
    Part {
        part: String,
        source: Box<RangeError>,
    },
    #[error("no kernel is in this range (from {low}{} to {high}{}): check the bounds",
        if *low_inclusive { " on" } else { " up" },
        if *high_inclusive { " inclusive" } else { " exclusive" })]
    Unsatisfiable {
        low: Version,
        low_inclusive: bool,
        high: Version,
        high_inclusive: bool,
    },
}

/// `>=6.12, <6.14`: every bound holds.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelRange(Vec<(Op, Version)>);

impl KernelRange {
    pub fn parse(text: &str) -> Result<KernelRange, RangeError> {
        if text.trim().is_empty() {
            return Err(RangeError::Empty);
        }
        let bounds = text
            .split(',')
            .map(str::trim)
            .map(|part| {
                let (op, rest) = [
                    ("<=", Op::Le),
                    (">=", Op::Ge),
                    ("<", Op::Lt),
                    (">", Op::Gt),
                    ("=", Op::Eq),
                ]
                .iter()
                .find_map(|(s, op)| part.strip_prefix(s).map(|r| (*op, r)))
                .ok_or_else(|| RangeError::NoOperator {
                    part: part.to_string(),
                })?;
                let v = Version::parse(rest.trim()).map_err(|e| RangeError::Part {
                    part: part.to_string(),
                    source: Box::new(e),
                })?;
                Ok((op, v))
            })
            .collect::<Result<Vec<_>, RangeError>>()?;
        let range = KernelRange(bounds);
        range.satisfiable()?;
        Ok(range)
    }

    pub fn contains(&self, v: &Version) -> bool {
        self.0.iter().all(|(op, want)| {
            let o = v.cmp(want);
            match op {
                Op::Lt => o.is_lt(),
                Op::Le => o.is_le(),
                Op::Gt => o.is_gt(),
                Op::Ge => o.is_ge(),
                Op::Eq => o.is_eq(),
            }
        })
    }

    /// Some version is in the range (versions are dense: 6.12.0.1 lies
    /// between 6.12 and 6.12.1), or why none is.
    fn satisfiable(&self) -> Result<(), RangeError> {
        // The highest lower bound and the lowest upper bound, each with
        // whether it is inclusive.
        let mut low: Option<(&Version, bool)> = None;
        let mut high: Option<(&Version, bool)> = None;
        for (op, v) in &self.0 {
            let (lo, hi) = match op {
                Op::Gt => (Some(false), None),
                Op::Ge => (Some(true), None),
                Op::Lt => (None, Some(false)),
                Op::Le => (None, Some(true)),
                Op::Eq => (Some(true), Some(true)),
            };
            if let Some(inc) = lo {
                if low.is_none_or(|(l, li)| v > l || (v == l && li && !inc)) {
                    low = Some((v, inc));
                }
            }
            if let Some(inc) = hi {
                if high.is_none_or(|(h, hi)| v < h || (v == h && hi && !inc)) {
                    high = Some((v, inc));
                }
            }
        }
        match (low, high) {
            (Some((l, li)), Some((h, hi))) if l > h || (l == h && !(li && hi)) => {
                Err(RangeError::Unsatisfiable {
                    low: l.clone(),
                    low_inclusive: li,
                    high: h.clone(),
                    high_inclusive: hi,
                })
            }
            _ => Ok(()),
        }
    }
}

/// Why an entry's `case` names no case of the tree (`ids`), if it does not:
/// an id or a prefix ending in `*`, never every case.
fn case_problem(case: &str, ids: &[&str]) -> Option<String> {
    if case.trim().is_empty() || case == "*" {
        return Some(
            "`case` names a case id (`clear/fsdax-s7`) or a prefix ending in `*` (`poison/fsdax-file*`), not every case".into(),
        );
    }
    if ids.iter().any(|id| pattern_covers(case, id)) {
        return None;
    }
    let folder = case.split('/').next().unwrap_or("");
    let near: Vec<&str> = ids
        .iter()
        .copied()
        .filter(|id| id.starts_with(folder))
        .take(3)
        .collect();
    let near = if near.is_empty() {
        String::new()
    } else {
        format!(" (in that folder: {})", near.join(", "))
    };
    Some(format!(
        "`{case}` names no case of the tree{near}; `cargo xtask lab -- --list` lists them"
    ))
}

/// Load and check the list against the case ids of the tree (`ids`: every
/// case and matrix cell). A missing file is an empty list.
pub fn load(path: &Path, ids: &[&str]) -> Result<Vec<KnownFailure>, Vec<CaseError>> {
    let at = |line, column, message: String, snippet: String| CaseError {
        path: path.to_path_buf(),
        line,
        column,
        message,
        snippet,
    };
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(Vec::new());
    }
    let text = read_bounded(path).map_err(|e| vec![at(0, 0, e.to_string(), String::new())])?;
    if text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Ok(Vec::new());
    }
    let entries: Vec<Entry> = serde_saphyr::from_str_with_options(&text, yaml_options())
        .map_err(|e| vec![parse_error(path, &e)])?;
    let mut errors = Vec::new();
    let mut error = |loc: &Location, message: String| {
        let (line, column) = (loc.line() as u32, loc.column() as u32);
        errors.push(at(line, column, message, snippet(&text, line, column)));
    };
    let mut list = Vec::new();
    let mut seen = std::collections::BTreeMap::new();
    for e in entries {
        let case = &e.case.value;
        if let Some(why) = case_problem(case, ids) {
            error(&e.case.referenced, why);
        }
        if let Some(first) = seen.insert(case.clone(), e.case.referenced.line()) {
            error(
                &e.case.referenced,
                format!("`{case}` is listed twice (first at line {first}): one entry per case"),
            );
        }
        if e.reason.value.trim().is_empty() {
            error(
                &e.reason.referenced,
                "`reason` says why the case fails, with the kernel code that decides it".into(),
            );
        }
        let kernel = match &e.kernel {
            None => None,
            Some(k) => match KernelRange::parse(&k.value) {
                Ok(r) => Some(r),
                Err(why) => {
                    error(&k.referenced, why.to_string());
                    None
                }
            },
        };
        list.push(KnownFailure {
            case: case.clone(),
            reason: e.reason.value,
            kernel,
        });
    }
    if errors.is_empty() {
        Ok(list)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDS: [&str; 4] = [
        "clear/fsdax-s7",
        "devdax/s3-consume[1G]",
        "devdax/s3-consume[2M]",
        "a",
    ];

    fn k(case: &str, kernel: Option<&str>) -> KnownFailure {
        KnownFailure {
            case: case.into(),
            reason: "r".into(),
            kernel: kernel.map(|r| KernelRange::parse(r).unwrap()),
        }
    }

    fn errors(text: &str) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.yaml");
        std::fs::write(&p, text).unwrap();
        match load(&p, &IDS) {
            Ok(_) => Vec::new(),
            Err(es) => es
                .iter()
                .map(|e| format!("{}:{}: {}", e.line, e.column, e.message))
                .collect(),
        }
    }

    #[test]
    fn matches_ids_prefixes_and_kernel_ranges() {
        assert!(k("clear/fsdax-s7", None).covers("clear/fsdax-s7", "6.12.117"));
        assert!(!k("clear/fsdax-s7", None).covers("clear/fsdax-s7x", "6.12.117"));
        assert!(k("devdax/s3-consume*", None).covers("devdax/s3-consume[1G]", "6.1"));
        let ranged = k("a", Some(">=6.12, <6.14"));
        assert!(ranged.covers("a", "6.12.117"));
        assert!(ranged.covers("a", "6.13.0-rc2"));
        assert!(!ranged.covers("a", "6.14"));
        assert!(!ranged.covers("a", "6.11.9"));
        assert!(k("a", Some("=6.12")).covers("a", "6.12.0"));
        assert!(!k("a", Some("=6.12")).covers("a", "6.12.1"));
    }

    #[test]
    fn each_bad_entry_is_refused_at_its_place() {
        for (text, want) in [
            (
                "- {case: a, reason: b, kernel: 'about 6.12'}\n",
                "1:32: kernel range part `about 6.12`: start with",
            ),
            (
                "- {case: a, reason: b, kernel: '>=6.x'}\n",
                "1:32: kernel range part `>=6.x`: `6.x` is not a kernel version",
            ),
            (
                "- {case: a, reason: b, kernel: '<6.14 garbage'}\n",
                "is not a kernel version",
            ),
            (
                "- {case: a, reason: b, kernel: ''}\n",
                "1:32: an empty kernel range",
            ),
            (
                "- {case: a, reason: b, kernel: '>=6.14, <6.12'}\n",
                "no kernel is in this range",
            ),
            (
                "- {case: a, reason: b, kernel: '>6.12, <=6.12'}\n",
                "no kernel is in this range",
            ),
            (
                "- {case: a, reason: b, kernel: '=6.1, =6.2'}\n",
                "no kernel is in this range",
            ),
            ("- {case: a, reason: b, kernel: '>=6.1,'}\n", "start with"),
            (
                "- {case: a, reason: b, kernel: '>=99999999999.1'}\n",
                "is not a kernel version",
            ),
            (
                "- {case: nope/x, reason: b}\n",
                "1:10: `nope/x` names no case of the tree",
            ),
            (
                "- {case: devdax/none*, reason: b}\n",
                "names no case of the tree (in that folder: devdax/s3-consume[1G]",
            ),
            ("- {case: '*', reason: b}\n", "not every case"),
            ("- {case: a, reason: ' '}\n", "1:21: `reason` says why"),
            (
                "- {case: a, reason: b}\n- {case: a, reason: c}\n",
                "2:10: `a` is listed twice (first at line 1)",
            ),
            ("- {case: a, reason: b, kernels: x}\n", "unknown field"),
            ("- case: a\n  reason: b\n  kernel: [6.1]\n", "3:"),
        ] {
            let got = errors(text);
            assert!(got.iter().any(|e| e.contains(want)), "{text:?}: {got:?}");
        }
        assert!(errors("- {case: a, reason: b, kernel: '>=6.1, <=6.1'}\n").is_empty());
        assert!(errors("- {case: 'devdax/s3-consume*', reason: b, kernel: '<6.12'}\n").is_empty());
    }

    #[test]
    fn the_file_is_read_like_a_case_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(&dir.path().join("none.yaml"), &IDS)
            .unwrap()
            .is_empty());
        let zero = dir.path().join("zero.yaml");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let e = load(&zero, &IDS).unwrap_err();
        assert!(e[0].message.contains("not a regular file"), "{e:?}");
        let fifo = dir.path().join("fifo.yaml");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(
            made.is_ok_and(|s| s.success()),
            "mkfifo (coreutils) is needed"
        );
        let e = load(&fifo, &IDS).unwrap_err();
        assert!(e[0].message.contains("not a regular file"), "{e:?}");
        let big = dir.path().join("big.yaml");
        std::fs::write(&big, "#".repeat(300 << 10)).unwrap();
        let e = load(&big, &IDS).unwrap_err();
        assert!(e[0].message.contains("larger than 256 KiB"), "{e:?}");
        let bomb = dir.path().join("bomb.yaml");
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let prev = format!("*a{}", i - 1);
            text.push_str(&format!(
                "a{i}: &a{i} [{}]\n",
                [prev.as_str(); 10].join(", ")
            ));
        }
        std::fs::write(&bomb, text).unwrap();
        let e = load(&bomb, &IDS).unwrap_err();
        assert!(e[0].line > 0 && !e[0].message.is_empty(), "{e:?}");
    }
}
