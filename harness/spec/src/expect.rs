//! Expectations on a command's result: exit status, stdout/stderr regexes,
//! JSON subset. A failed check says what was expected and what came back.

use crate::json_subset;
use pmem_lab_proto::{RunResult, SignalInfo};
use regex::Regex;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitExpect {
    Code(i32),
    NonZero,
    Any,
}

#[derive(Debug, Clone)]
pub struct RunExpect {
    pub exit: ExitExpect,
    /// Each must match stdout (multi-line mode: `^`/`$` match at lines).
    pub stdout: Vec<Regex>,
    pub stderr: Vec<Regex>,
    /// None may match stdout.
    pub stdout_not: Vec<Regex>,
    pub json: Option<Value>,
}

impl Default for RunExpect {
    fn default() -> Self {
        RunExpect {
            exit: ExitExpect::Code(0),
            stdout: Vec::new(),
            stderr: Vec::new(),
            stdout_not: Vec::new(),
            json: None,
        }
    }
}

/// The most regexes one case file (one matrix cell) may hold.
pub const MAX_PATTERNS: usize = 64;
/// The longest pattern, in bytes.
pub const MAX_PATTERN_BYTES: usize = 2048;
/// The most one compiled regex may take (the regex crate's `size_limit`,
/// and its lazy DFA's cache). Real patterns take a few KiB; counted
/// repetitions multiply (`(a{100}){100}` is 10,000 states). Bounded so that
/// a file's worst, MAX_PATTERNS times 64 cells, stays near 100 MiB.
pub const REGEX_BYTES: usize = 32 << 10;

/// Why a case's regex is refused.
#[derive(Debug, thiserror::Error)]
pub enum RegexError {
    #[error("the regex has {0} bytes; at most {MAX_PATTERN_BYTES}")]
    Long(usize),
    #[error(
        "the regex compiles to more than {} KiB: simplify it (counted repetitions \
         such as `(a{{100}}){{100}}` multiply, and `\\w`, `\\d` are Unicode classes: \
         `[0-9a-z_]` is smaller)",
        REGEX_BYTES >> 10
    )]
    Big,
    #[error("bad regex: {0}")]
    Bad(regex::Error),
}

/// Compile a case's regex the way every expectation uses it, within the
/// bounds above.
pub fn compile(pattern: &str) -> Result<Regex, RegexError> {
    if pattern.len() > MAX_PATTERN_BYTES {
        return Err(RegexError::Long(pattern.len()));
    }
    regex::RegexBuilder::new(pattern)
        .multi_line(true)
        .size_limit(REGEX_BYTES)
        .dfa_size_limit(REGEX_BYTES)
        .nest_limit(64)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(_) => RegexError::Big,
            e => RegexError::Bad(e),
        })
}

/// Whether `re` matches any text at all (it matches the empty string and
/// texts that share nothing with it: `""`, `.*`, `x*`, `a|`): as an
/// expectation it checks nothing, as an allowance it allows everything.
pub fn matches_anything(re: &Regex) -> bool {
    [
        "",
        "\u{7f}",
        "no line of a kernel log or oracle message looks like this \u{1}",
    ]
    .iter()
    .all(|t| re.is_match(t))
}

impl RunExpect {
    /// Every unmet expectation, one line each; empty when all hold.
    pub fn check(&self, r: &RunResult) -> Vec<String> {
        let mut problems = Vec::new();
        if r.timed_out {
            problems.push(format!("command {}", r.status_text()));
            return problems;
        }
        let exit_ok = match (&self.exit, r.exit_code) {
            (ExitExpect::Any, _) => true,
            (ExitExpect::NonZero, Some(c)) => c != 0,
            (ExitExpect::Code(want), Some(c)) => *want == c,
            (_, None) => false,
        };
        if !exit_ok {
            let want = match &self.exit {
                ExitExpect::Code(c) => format!("exit {c}"),
                ExitExpect::NonZero => "a non-zero exit".into(),
                ExitExpect::Any => unreachable!(),
            };
            problems.push(format!("expected {want}, got {}", r.status_text()));
        }
        for re in &self.stdout {
            if !re.is_match(&r.stdout) {
                problems.push(format!("stdout does not match /{re}/"));
            }
        }
        for re in &self.stdout_not {
            if let Some(m) = re.find(&r.stdout) {
                problems.push(format!(
                    "stdout matches /{re}/ (at {:?}) but must not",
                    m.as_str()
                ));
            }
        }
        for re in &self.stderr {
            if !re.is_match(&r.stderr) {
                problems.push(format!("stderr does not match /{re}/"));
            }
        }
        if let Some(want) = &self.json {
            match serde_json::from_str::<Value>(&r.stdout) {
                Ok(got) => {
                    if let Err(e) = json_subset::check(want, &got) {
                        problems.push(format!("JSON mismatch at {e}"));
                    }
                }
                Err(e) => problems.push(format!("stdout is not JSON ({e})")),
            }
        }
        problems
    }
}

/// What a `consume`, `poison` or `signals` step expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalExpect {
    None,
    Some {
        /// `SIGBUS`
        name: String,
        /// `BUS_MCEERR_AR`; any when `None`.
        code: Option<String>,
        /// si_addr minus the mapping's base.
        offset: Option<u64>,
        lsb: Option<u16>,
    },
}

impl SignalExpect {
    /// Check the signals a step saw (`base`: the mapping's address).
    pub fn check(&self, got: &[SignalInfo], base: Option<u64>) -> Vec<String> {
        let describe = |s: &SignalInfo| match base {
            Some(b) if s.addr >= b => format!(
                "{} {} at mapping offset {:#x}, lsb {}",
                s.signal_name(),
                s.code_name(),
                s.addr - b,
                s.addr_lsb
            ),
            _ => format!(
                "{} {} at {:#x}, lsb {}",
                s.signal_name(),
                s.code_name(),
                s.addr,
                s.addr_lsb
            ),
        };
        match (self, got) {
            (SignalExpect::None, []) => Vec::new(),
            (SignalExpect::None, sigs) => {
                vec![format!(
                    "expected no signal, got {}",
                    sigs.iter().map(describe).collect::<Vec<_>>().join("; ")
                )]
            }
            (SignalExpect::Some { .. }, []) => vec!["expected a signal, got none".to_string()],
            (
                SignalExpect::Some {
                    name,
                    code,
                    offset,
                    lsb,
                },
                [s],
            ) => {
                let mut p = Vec::new();
                if &s.signal_name() != name {
                    p.push(format!("expected {name}, got {}", describe(s)));
                }
                if let Some(c) = code.as_ref().filter(|c| **c != s.code_name()) {
                    p.push(format!("expected si_code {c}, got {}", describe(s)));
                }
                if let Some(want) = offset {
                    let at = base.and_then(|b| s.addr.checked_sub(b));
                    if at != Some(*want) {
                        p.push(format!(
                            "expected si_addr at mapping offset {want:#x}, got {}",
                            describe(s)
                        ));
                    }
                }
                if let Some(l) = lsb.filter(|l| *l != s.addr_lsb) {
                    p.push(format!("expected si_addr_lsb {l}, got {}", describe(s)));
                }
                p
            }
            (SignalExpect::Some { .. }, sigs) => vec![format!(
                "expected one signal, got {}: {}",
                sigs.len(),
                sigs.iter().map(describe).collect::<Vec<_>>().join("; ")
            )],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn result(code: i32, stdout: &str) -> RunResult {
        RunResult {
            exit_code: Some(code),
            stdout: stdout.into(),
            ..Default::default()
        }
    }

    #[test]
    fn default_expects_success() {
        assert!(RunExpect::default().check(&result(0, "")).is_empty());
        assert_eq!(
            RunExpect::default().check(&result(2, "")),
            ["expected exit 0, got exit 2"]
        );
    }

    #[test]
    fn regexes_are_multiline_and_negatable() {
        let e = RunExpect {
            stdout: vec![compile("^badblocks$").unwrap()],
            stdout_not: vec![compile("Oops").unwrap()],
            ..Default::default()
        };
        assert!(e
            .check(&result(0, "resource\nbadblocks\nsize\n"))
            .is_empty());
        let p = e.check(&result(0, "x\nOops: 0000\n"));
        assert_eq!(p.len(), 2, "{p:?}");
    }

    #[test]
    fn json_subset_and_bad_json() {
        let e = RunExpect {
            json: Some(json!([{"align": 2097152}])),
            ..Default::default()
        };
        assert!(e
            .check(&result(0, r#"[{"chardev":"dax0.0","align":2097152}]"#))
            .is_empty());
        assert!(e.check(&result(0, "not json"))[0].starts_with("stdout is not JSON"));
        assert!(
            e.check(&result(0, r#"[{"align":4096}]"#))[0].contains("expected 2097152, got 4096")
        );
    }

    #[test]
    fn nonzero_and_timeouts() {
        let e = RunExpect {
            exit: ExitExpect::NonZero,
            ..Default::default()
        };
        assert!(e.check(&result(1, "")).is_empty());
        assert_eq!(
            e.check(&result(0, "")),
            ["expected a non-zero exit, got exit 0"]
        );
        let timed_out = RunResult {
            timed_out: true,
            duration_ms: 5,
            ..Default::default()
        };
        assert_eq!(e.check(&timed_out), ["command timed out after 5 ms"]);
    }

    #[test]
    fn signals_match_name_code_offset_and_lsb() {
        let base = 0x7f00_0000_0000;
        let ar = SignalInfo {
            signo: 7,
            code: 4,
            addr: base + 0x20_0000,
            addr_lsb: 21,
            tid: 9,
        };
        let want = SignalExpect::Some {
            name: "SIGBUS".into(),
            code: Some("BUS_MCEERR_AR".into()),
            offset: Some(0x20_0000),
            lsb: Some(21),
        };
        assert!(want.check(std::slice::from_ref(&ar), Some(base)).is_empty());
        let ao = SignalInfo {
            code: 5,
            addr_lsb: 12,
            ..ar.clone()
        };
        let p = want.check(&[ao], Some(base));
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("expected si_code BUS_MCEERR_AR, got SIGBUS BUS_MCEERR_AO at mapping offset 0x200000, lsb 12"));
        assert_eq!(want.check(&[], Some(base)), ["expected a signal, got none"]);
        assert!(SignalExpect::None.check(&[], None).is_empty());
        assert!(SignalExpect::None.check(&[ar], Some(base))[0]
            .starts_with("expected no signal, got SIGBUS BUS_MCEERR_AR"));
    }

    #[test]
    fn bad_regex_is_reported() {
        assert!(matches!(compile("(").unwrap_err(), RegexError::Bad(_)));
    }
}
