//! `matrix:` turns one case file into several cases, one per cell.
//!
//! Two forms:
//!
//! ```yaml
//! matrix:                 # every combination (a product)
//!   align: [4K, 2M]
//!   cpus: [1, 2]
//! ```
//!
//! ```yaml
//! matrix:                 # explicit cells, when values go together
//!   - {align: 4K, dimm: 1G, size: 512M}
//!   - {align: 1G, dimm: 4G, size: 3G}
//! ```
//!
//! `${matrix.KEY}` anywhere in the file is replaced by the cell's value
//! before the file is parsed, so a value can go where a size or a number is
//! expected. Written as a whole quoted scalar (`"${matrix.KEY}"`, needed
//! inside YAML flow collections), it is replaced quotes and all, so the value
//! keeps its own YAML type. Replacement is textual and keeps every line where it was, so
//! error lines stay right. A cell is named `id[key=value,...]` (or
//! `id[NAME]` when the cell has a `name` key).

use serde::Deserialize;
use serde_json::Value;
use serde_saphyr::Spanned;
use std::collections::BTreeMap;

const OPEN: &str = "${matrix.";

#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    pub label: String,
    pub values: BTreeMap<String, String>,
}

/// A located problem: (line, column, message).
pub type Problem = (u32, u32, String);

/// The most cells one file may expand to: each is a VM boot.
pub const MAX_CELLS: usize = 64;

#[derive(Deserialize)]
struct Head {
    #[serde(default)]
    matrix: Option<Spanned<Value>>,
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A cell's name becomes part of a case id, and so of a folder name under
/// the artifacts root: a closed set of characters, and never `..`.
fn safe_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 100
        && !label.contains("..")
        && label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._=,+-".contains(c))
}

/// The cells of a file, or `None` when it has no matrix. Syntax errors are
/// left for the real parse to report.
pub fn cells(text: &str) -> Result<Option<Vec<Cell>>, Problem> {
    let Ok(head) = serde_saphyr::from_str_with_options::<Head>(text, super::load::yaml_options())
    else {
        return Ok(None);
    };
    let Some(m) = head.matrix else {
        if let Some(at) = text.find(OPEN) {
            let (line, col) = line_col(text, at);
            return Err((
                line,
                col,
                "`${matrix.…}` is used but the file has no `matrix:`".to_string(),
            ));
        }
        return Ok(None);
    };
    let at = (m.referenced.line() as u32, m.referenced.column() as u32);
    let rows = match m.value {
        Value::Object(axes) => product(&axes, at)?,
        Value::Array(cells) => listed(&cells, at)?,
        _ => {
            return Err(problem(
                at,
                "matrix is a map of lists (every combination) or a list of maps (one per cell)",
            ))
        }
    };
    if rows.is_empty() || rows.iter().all(|r| r.is_empty()) {
        return Err(problem(at, "the matrix has no cells"));
    }
    labelled(rows, at).map(Some)
}

/// A problem at the matrix's `at`.
fn problem(at: (u32, u32), msg: impl Into<String>) -> Problem {
    (at.0, at.1, msg.into())
}

/// One cell's values, by key.
type Row = BTreeMap<String, String>;

/// A value of axis `key` as text (a scalar).
fn value_of(key: &str, v: &Value, at: (u32, u32)) -> Result<String, Problem> {
    scalar(v).ok_or_else(|| problem(at, format!("matrix `{key}`: values must be scalars")))
}

/// A map of lists: every combination of the axes' values, bounded before
/// any is made.
fn product(axes: &serde_json::Map<String, Value>, at: (u32, u32)) -> Result<Vec<Row>, Problem> {
    let mut total: usize = 1;
    for (key, values) in axes {
        let Value::Array(values) = values else {
            return Err(problem(
                at,
                format!("matrix `{key}`: write a list of values, e.g. `{key}: [4K, 2M]`"),
            ));
        };
        if values.is_empty() {
            return Err(problem(at, format!("matrix key `{key}` has no values")));
        }
        total = total.saturating_mul(values.len());
    }
    if total > MAX_CELLS {
        return Err(problem(
            at,
            format!(
                "the matrix makes {total} cells; the limit is {MAX_CELLS} (each cell boots a VM)"
            ),
        ));
    }
    let mut rows = vec![Row::new()];
    for (key, values) in axes {
        let values = values.as_array().expect("checked above");
        let mut next = Vec::new();
        for row in &rows {
            for v in values {
                let mut r = row.clone();
                r.insert(key.clone(), value_of(key, v, at)?);
                next.push(r);
            }
        }
        rows = next;
    }
    Ok(rows)
}

/// A list of maps: one cell each.
fn listed(cells: &[Value], at: (u32, u32)) -> Result<Vec<Row>, Problem> {
    if cells.len() > MAX_CELLS {
        return Err(problem(
            at,
            format!(
                "the matrix lists {} cells; the limit is {MAX_CELLS} (each cell boots a VM)",
                cells.len()
            ),
        ));
    }
    cells
        .iter()
        .map(|c| match c {
            Value::Object(c) => c
                .iter()
                .map(|(k, v)| Ok((k.clone(), value_of(k, v, at)?)))
                .collect(),
            _ => Err(problem(
                at,
                "a matrix cell is a map of values, e.g. `- {align: 4K, size: 512M}`",
            )),
        })
        .collect()
}

/// The cells of `rows`, each named by its `name` or its key=value pairs:
/// a safe folder name, once per file.
fn labelled(rows: Vec<Row>, at: (u32, u32)) -> Result<Vec<Cell>, Problem> {
    let cells: Vec<Cell> = rows
        .into_iter()
        .map(|values| {
            let label = match values.get("name") {
                Some(n) => n.clone(),
                None => values
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
            };
            Cell { label, values }
        })
        .collect();
    for (i, c) in cells.iter().enumerate() {
        if !safe_label(&c.label) {
            return Err(problem(
                at,
                format!(
                    "matrix cell `{}`: a cell's name (its `name`, else key=value pairs) uses letters, digits and `._=,+-` only, \
                     without `..`, at most 100 characters: it names the cell's artifacts folder",
                    c.label
                ),
            ));
        }
        if cells[..i].iter().any(|o| o.label == c.label) {
            return Err(problem(
                at,
                format!("two matrix cells are both named `{}`", c.label),
            ));
        }
    }
    Ok(cells)
}

/// The file's text with this cell's values in place.
pub fn substitute(text: &str, cell: &Cell) -> Result<String, Problem> {
    let mut out = String::with_capacity(text.len());
    let mut rest = 0;
    while let Some(found) = text[rest..].find(OPEN) {
        let start = rest + found;
        let body = start + OPEN.len();
        // Located only on error: a file of many placeholders would
        // otherwise count lines from the top for each (quadratic).
        let at = || line_col(text, start);
        let close = text[body..].find('}').ok_or_else(|| {
            let (line, col) = at();
            (line, col, "`${matrix.` is not closed with `}`".to_string())
        })?;
        let key = &text[body..body + close];
        let value = cell.values.get(key).ok_or_else(|| {
            let (line, col) = at();
            let known: Vec<&str> = cell.values.keys().map(String::as_str).collect();
            (
                line,
                col,
                format!(
                    "`${{matrix.{key}}}`: the matrix has no `{key}` (it has: {})",
                    known.join(", ")
                ),
            )
        })?;
        let end = body + close + 1;
        // `"${matrix.KEY}"` as a whole quoted scalar loses its quotes when
        // the value is a plain token (a number, a size, a word): the quotes
        // only satisfy YAML's flow syntax, and the value should keep its own
        // type (a sector number stays a number). Text with spaces or YAML
        // punctuation keeps them.
        let plain = value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c));
        let quote = text[..start]
            .chars()
            .last()
            .filter(|q| plain && (*q == '"' || *q == '\''));
        match quote {
            Some(q) if text[end..].starts_with(q) => {
                out.push_str(&text[rest..start - 1]);
                out.push_str(value);
                rest = end + 1;
            }
            _ => {
                out.push_str(&text[rest..start]);
                out.push_str(value);
                rest = end;
            }
        }
        if out.len() as u64 > super::load::MAX_FILE_BYTES {
            let (line, col) = at();
            return Err((
                line,
                col,
                format!(
                    "cell `{}` expands the file past {} KiB (a case file's bound) by here: \
                     use shorter matrix values or fewer placeholders",
                    cell.label,
                    super::load::MAX_FILE_BYTES / 1024
                ),
            ));
        }
    }
    out.push_str(&text[rest..]);
    Ok(out)
}

fn line_col(text: &str, offset: usize) -> (u32, u32) {
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line as u32, col as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_and_explicit_cells() {
        let t = "matrix:\n  align: [4K, 2M]\n  cpus: [1, 2]\nsteps: []\n";
        let cells = cells(t).unwrap().unwrap();
        let labels: Vec<_> = cells.iter().map(|c| c.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "align=4K,cpus=1",
                "align=4K,cpus=2",
                "align=2M,cpus=1",
                "align=2M,cpus=2"
            ]
        );
        let t = "matrix:\n  - {name: small, size: 512M}\n  - {name: huge, size: 3G}\nsteps: []\n";
        let explicit = super::cells(t).unwrap().unwrap();
        assert_eq!(explicit[1].label, "huge");
        assert_eq!(explicit[1].values["size"], "3G");
        assert_eq!(super::cells("steps: []\n").unwrap(), None);
    }

    #[test]
    fn substitution_keeps_lines_and_names_unknown_keys() {
        let cell = Cell {
            label: "a".into(),
            values: [("align".to_string(), "2M".to_string())].into(),
        };
        let t = "x: 1\nalign: ${matrix.align}\nsh: echo ${HOME}\n";
        assert_eq!(
            substitute(t, &cell).unwrap(),
            "x: 1\nalign: 2M\nsh: echo ${HOME}\n"
        );
        // A whole quoted scalar becomes the bare value; a quoted string
        // containing more keeps its quotes.
        let t = "a: [\"${matrix.align}\", '${matrix.align}', \"x${matrix.align}\"]\n";
        assert_eq!(substitute(t, &cell).unwrap(), "a: [2M, 2M, \"x2M\"]\n");
        let prose = Cell {
            label: "p".into(),
            values: [("log".to_string(), "dax page: Failed".to_string())].into(),
        };
        assert_eq!(
            substitute("dmesg: '${matrix.log}'\n", &prose).unwrap(),
            "dmesg: 'dax page: Failed'\n"
        );
        let (line, col, msg) = substitute("a: 1\n  b: ${matrix.size}\n", &cell).unwrap_err();
        assert_eq!((line, col), (2, 6));
        assert!(msg.contains("has no `size` (it has: align)"), "{msg}");
    }

    #[test]
    fn malformed_matrices_are_located() {
        let (line, _, msg) = cells("steps: []\nmatrix:\n  align: []\n").unwrap_err();
        assert_eq!(line, 3);
        assert!(msg.contains("no values"));
        let (_, _, msg) = cells("matrix:\n  - {name: a}\n  - {name: a}\n").unwrap_err();
        assert!(msg.contains("both named `a`"));
    }
}
