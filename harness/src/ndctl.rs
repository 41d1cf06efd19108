//! ndctl's output forms, read in one place for setup, the oracle and the
//! checks.

use serde_json::Value;

/// `ndctl list` prints a bare object for one result, an array for several and
/// nothing for none; always give back a list.
pub fn json_list(stdout: &str) -> Result<Vec<Value>, String> {
    if stdout.trim().is_empty() {
        return Ok(Vec::new());
    }
    match serde_json::from_str::<Value>(stdout) {
        Ok(Value::Array(items)) => Ok(items),
        Ok(v @ Value::Object(_)) => Ok(vec![v]),
        Ok(other) => Err(format!("expected a JSON list, got {other}")),
        Err(e) => Err(format!("not JSON ({e}): {stdout}")),
    }
}
