//! ndctl's output forms (and the numbers sysfs prints beside them), read
//! in one place for setup, CXL, the oracle and the checks.

use crate::unreadable::Unreadable;
use serde_json::Value;

/// `ndctl list` prints a bare object for one result, an array for several and
/// nothing for none; always give back a list.
pub fn json_list(stdout: &str) -> Result<Vec<Value>, Unreadable> {
    if stdout.trim().is_empty() {
        return Ok(Vec::new());
    }
    match serde_json::from_str::<Value>(stdout) {
        Ok(Value::Array(items)) => Ok(items),
        Ok(v @ Value::Object(_)) => Ok(vec![v]),
        Ok(other) => Err(Unreadable::new(
            "ndctl's listing",
            "not a JSON list",
            other.to_string(),
        )),
        Err(e) => Err(Unreadable::new(
            "ndctl's listing",
            format!("not JSON ({e})"),
            stdout,
        )),
    }
}

/// A sysfs number: `0x...` addresses or decimal sizes; `what` names it in
/// the error.
pub fn sysfs_number(text: &str, what: &str) -> Result<u64, Unreadable> {
    let t = text.trim();
    let parsed = match t.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => t.parse(),
    };
    parsed.map_err(|_| Unreadable::new(what, "not a number", t))
}
