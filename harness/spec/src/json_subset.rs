//! "Does this JSON contain that JSON?": how a case checks `ndctl list` and
//! `daxctl list` output field by field without spelling out every uuid.
//!
//! Rules, applied recursively:
//! - object: every expected key exists in the actual object and its value
//!   matches; extra actual keys are fine;
//! - array: every expected element matches a *different* actual element, in
//!   any order (ndctl's ordering is not part of its contract);
//! - expected array against an actual single object: matched as if the object
//!   were a one-element array, because `ndctl list` prints a bare object when
//!   there is exactly one result and an array otherwise;
//! - numbers compare by value (2097152 == 2097152.0); everything else by
//!   equality.

use serde_json::Value;

/// The first place where the actual JSON does not contain the expected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Mismatch {
    #[error("{path}: missing (object has keys: {})", keys.join(", "))]
    Missing { path: String, keys: Vec<String> },
    #[error("{path}: expected {want}, got {got}")]
    Differs {
        path: String,
        want: Value,
        got: Value,
    },
    #[error("{path}: no element matches expected[{index}] = {want}: {}", match (elements, nearest) {
        (0, _) => "the array is empty".to_string(),
        (1, Some(e)) => e.to_string(),
        (n, _) => format!("none of the {n} elements matches"),
    })]
    NoElement {
        path: String,
        index: usize,
        want: Value,
        elements: usize,
        /// With one element, why it does not match.
        nearest: Option<Box<Mismatch>>,
    },
}

/// `Ok(())` or the first mismatch with what was expected there.
pub fn check(expected: &Value, actual: &Value) -> Result<(), Mismatch> {
    matches(expected, actual, "$")
}

fn matches(expected: &Value, actual: &Value, path: &str) -> Result<(), Mismatch> {
    match (expected, actual) {
        (Value::Object(want), Value::Object(got)) => {
            for (key, want_v) in want {
                let child = format!("{path}.{key}");
                match got.get(key) {
                    Some(got_v) => matches(want_v, got_v, &child)?,
                    None => {
                        return Err(Mismatch::Missing {
                            path: child,
                            keys: got.keys().cloned().collect(),
                        })
                    }
                }
            }
            Ok(())
        }
        (Value::Array(want), Value::Array(got)) => match_elements(want, got, path),
        (Value::Array(want), Value::Object(_)) => {
            match_elements(want, std::slice::from_ref(actual), path)
        }
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => Ok(()),
        (a, b) if a == b => Ok(()),
        (a, b) => Err(Mismatch::Differs {
            path: path.to_string(),
            want: a.clone(),
            got: b.clone(),
        }),
    }
}

/// Greedy assignment: each expected element takes the first unused actual
/// element that matches it. Enough for listings, where elements differ by
/// their `dev` name.
fn match_elements(want: &[Value], got: &[Value], path: &str) -> Result<(), Mismatch> {
    let mut used = vec![false; got.len()];
    for (i, w) in want.iter().enumerate() {
        let mut last_err = None;
        let found = got.iter().enumerate().find(|(j, g)| {
            if used[*j] {
                return false;
            }
            match matches(w, g, &format!("{path}[{j}]")) {
                Ok(()) => true,
                Err(e) => {
                    last_err = Some(e);
                    false
                }
            }
        });
        match found {
            Some((j, _)) => used[j] = true,
            None => {
                return Err(Mismatch::NoElement {
                    path: path.to_string(),
                    index: i,
                    want: w.clone(),
                    elements: got.len(),
                    nearest: last_err.filter(|_| got.len() == 1).map(Box::new),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn objects_allow_extra_keys() {
        let got = json!({"dev": "region0", "size": 1056964608, "type": "pmem"});
        assert!(check(&json!({"dev": "region0", "size": 1056964608}), &got).is_ok());
        let err = check(&json!({"size": 1}), &got).unwrap_err();
        assert_eq!(
            err,
            Mismatch::Differs {
                path: "$.size".into(),
                want: json!(1),
                got: json!(1056964608)
            }
        );
        assert_eq!(err.to_string(), "$.size: expected 1, got 1056964608");
        let err = check(&json!({"align": 1}), &got).unwrap_err().to_string();
        assert!(err.starts_with("$.align: missing"), "{err}");
    }

    #[test]
    fn arrays_match_in_any_order_without_reuse() {
        let got = json!([{"provider": "nfit_test.1"}, {"provider": "nfit_test.0"}]);
        assert!(check(
            &json!([{"provider": "nfit_test.0"}, {"provider": "nfit_test.1"}]),
            &got
        )
        .is_ok());
        let err = check(
            &json!([{"provider": "nfit_test.0"}, {"provider": "nfit_test.0"}]),
            &got,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("no element matches expected[1]"), "{err}");
    }

    #[test]
    fn a_bare_object_counts_as_a_one_element_array() {
        let got = json!({"dev": "namespace0.0", "mode": "devdax"});
        assert!(check(&json!([{"mode": "devdax"}]), &got).is_ok());
        let err = check(&json!([{"mode": "fsdax"}]), &got)
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected \"fsdax\", got \"devdax\""), "{err}");
    }

    #[test]
    fn numbers_compare_by_value_and_types_must_agree() {
        assert!(check(&json!(2097152.0), &json!(2097152)).is_ok());
        assert!(check(&json!("2097152"), &json!(2097152)).is_err());
        assert!(check(&json!([]), &json!([1])).is_ok());
        assert!(check(&json!([1]), &json!([]))
            .unwrap_err()
            .to_string()
            .contains("empty"));
    }

    #[test]
    fn nested_paths_are_reported() {
        let got = json!({"daxregion": {"devices": [{"chardev": "dax0.0", "align": 4096}]}});
        let err = check(
            &json!({"daxregion": {"devices": [{"align": 2097152}]}}),
            &got,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("$.daxregion.devices[0].align: expected 2097152, got 4096"),
            "{err}"
        );
    }
}
