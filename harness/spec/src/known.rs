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

use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KnownFailure {
    pub case: String,
    pub reason: String,
    #[serde(default)]
    pub kernel: Option<String>,
}

impl KnownFailure {
    /// Does this entry cover case `id` on kernel `release`?
    pub fn covers(&self, id: &str, release: &str) -> bool {
        let case = match self.case.strip_suffix('*') {
            Some(prefix) => id.starts_with(prefix),
            None => id == self.case,
        };
        case && self
            .kernel
            .as_deref()
            .is_none_or(|range| in_range(release, range))
    }
}

/// Load the list; a missing file is an empty list.
pub fn load(path: &Path) -> Result<Vec<KnownFailure>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    if text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Ok(Vec::new());
    }
    let list: Vec<KnownFailure> =
        serde_saphyr::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    for k in &list {
        if let Some(r) = &k.kernel {
            parse_range(r).map_err(|e| format!("{}: case {}: {e}", path.display(), k.case))?;
        }
    }
    Ok(list)
}

/// "6.12.117-rc1+" -> [6, 12, 117].
fn version(text: &str) -> Vec<u64> {
    text.split(|c: char| !c.is_ascii_digit() && c != '.')
        .next()
        .unwrap_or("")
        .split('.')
        .filter_map(|p| p.parse().ok())
        .collect()
}

type Bound = (String, Vec<u64>);

fn parse_range(range: &str) -> Result<Vec<Bound>, String> {
    range
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let op_len = p.find(|c: char| c.is_ascii_digit()).unwrap_or(p.len());
            let (op, v) = p.split_at(op_len);
            let op = op.trim();
            if !["<", "<=", ">", ">=", "="].contains(&op) || version(v).is_empty() {
                return Err(format!(
                    "kernel range part `{p}`: write e.g. `>=6.12` or `<6.14`"
                ));
            }
            Ok((op.to_string(), version(v)))
        })
        .collect()
}

/// Compare on the precision the bound gives: `<6.14` means below 6.14.0.
fn in_range(release: &str, range: &str) -> bool {
    let have = version(release);
    parse_range(range)
        .unwrap_or_default()
        .iter()
        .all(|(op, want)| {
            let mut h = have.clone();
            h.resize(want.len().max(h.len()), 0);
            let mut w = want.clone();
            w.resize(h.len(), 0);
            let ord = h.cmp(&w);
            match op.as_str() {
                "<" => ord.is_lt(),
                "<=" => ord.is_le(),
                ">" => ord.is_gt(),
                ">=" => ord.is_ge(),
                _ => ord.is_eq(),
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(case: &str, kernel: Option<&str>) -> KnownFailure {
        KnownFailure {
            case: case.into(),
            reason: "r".into(),
            kernel: kernel.map(str::to_string),
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
    }

    #[test]
    fn bad_ranges_are_refused_when_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.yaml");
        std::fs::write(&p, "- {case: a, reason: b, kernel: 'about 6.12'}\n").unwrap();
        assert!(load(&p).unwrap_err().contains("kernel range part"));
        std::fs::write(&p, "- {case: a, reason: b, kernel: '>=6.1'}\n").unwrap();
        assert_eq!(load(&p).unwrap().len(), 1);
        assert!(load(&dir.path().join("none.yaml")).unwrap().is_empty());
    }
}
