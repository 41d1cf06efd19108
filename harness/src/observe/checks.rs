//! Checks the runner makes on top of a step's own expectations: a scrub that
//! ended idle, a clear that left nothing behind, `expect_badblocks`.

use crate::address::Target;
use crate::badblocks::{self, Range};
use crate::guest::ndctl;
use crate::guest::setup::Layout;
use crate::observe::oracle;

/// `ndctl wait-scrub` returned: every bus it lists must be idle.
pub fn scrub_not_idle(bus: &str, stdout: &str) -> Vec<String> {
    match ndctl::json_list(stdout) {
        Ok(buses) if !buses.is_empty() => buses
            .iter()
            .filter(|b| b["scrub_state"] != "idle")
            .map(|b| {
                format!(
                    "{bus}: wait-scrub returned with scrub_state {}",
                    b["scrub_state"]
                )
            })
            .collect(),
        Ok(_) => vec![format!("{bus}: wait-scrub listed no bus")],
        Err(e) => vec![format!("{bus}: wait-scrub output: {e}")],
    }
}

/// `clear-errors` said it succeeded: then no layer may still list a
/// badblock in the namespace (ndctl issue 158: "clear reported success but
/// badblocks remain").
pub fn still_bad_after_clear(
    snap: &oracle::ErrorState,
    layout: &Layout,
    namespace: &str,
) -> Vec<String> {
    let mut out = Vec::new();
    let window =
        oracle::expected_namespace_view(&layout.geometry, snap, namespace).unwrap_or_default();
    let dev = layout
        .namespaces
        .get(namespace)
        .map(|n| n.dev.as_str())
        .unwrap_or("?");
    if !window.is_empty() {
        out.push(format!(
            "clear-errors succeeded on {dev} (`{namespace}`) but its region still lists {} in the namespace's data",
            badblocks::show(&window)
        ));
    }
    if let Some(n) = snap.namespace(namespace) {
        if !n.ndctl.is_empty() {
            out.push(format!(
                "clear-errors succeeded on {dev} but ndctl still lists {}",
                badblocks::show(&n.ndctl)
            ));
        }
        if let Some(s) = n.sysfs.as_ref().filter(|s| !s.is_empty()) {
            out.push(format!(
                "clear-errors succeeded on {dev} but its block device still lists {}",
                badblocks::show(s)
            ));
        }
    }
    out
}

/// An `expect_badblocks` against every view of its target: what is
/// wrong, or `None` when every view has the ranges.
pub fn check_badblocks(
    snap: &oracle::ErrorState,
    layout: &Layout,
    target: &Target,
    want: &[Range],
    exact: bool,
) -> Option<String> {
    let (what, views): (String, Vec<(&str, &Vec<Range>)>) = match target {
        Target::Region(i) => {
            let Some(r) = snap.region(*i) else {
                return Some(format!("no region for NVDIMM {i}"));
            };
            (
                r.dev.clone(),
                vec![
                    ("sysfs badblocks", &r.sysfs),
                    ("ndctl list --media-errors", &r.ndctl),
                ],
            )
        }
        Target::Namespace(name) => {
            let Some(n) = snap.namespace(name) else {
                return Some(format!("no namespace `{name}`"));
            };
            let mut v = vec![("ndctl list --media-errors", &n.ndctl)];
            if let Some(s) = &n.sysfs {
                v.push(("block device badblocks", s));
            }
            (format!("{} (`{name}`)", layout.namespaces[name].dev), v)
        }
    };
    let wrong: Vec<String> = views
        .iter()
        .filter(|(_, have)| {
            if exact {
                have.as_slice() != want
            } else {
                !badblocks::covers(have, want)
            }
        })
        .map(|(src, have)| format!("{src} has {}", badblocks::show(have)))
        .collect();
    (!wrong.is_empty()).then(|| {
        format!(
            "{what}: expected badblocks {} ({}), but {}",
            badblocks::show(want),
            if exact { "exactly" } else { "at least" },
            wrong.join("; ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::setup::NamespaceInfo;
    use crate::observe::oracle::fixtures::{geometry, r, snapshot};

    fn layout() -> Layout {
        let mut l = Layout {
            regions: vec!["region0".into()],
            geometry: geometry(),
            ..Layout::default()
        };
        l.namespaces.insert(
            "fs".into(),
            NamespaceInfo {
                mode: crate::case::NamespaceMode::Fsdax,
                dev: "namespace0.0".into(),
                region: "region0".into(),
                chardev: None,
                blockdev: Some("pmem0".into()),
            },
        );
        l
    }

    #[test]
    fn a_scrub_must_end_idle_on_every_bus() {
        assert!(scrub_not_idle(
            "ACPI.NFIT",
            r#"{"provider":"ACPI.NFIT","scrub_state":"idle"}"#
        )
        .is_empty());
        assert_eq!(
            scrub_not_idle(
                "ACPI.NFIT",
                r#"[{"scrub_state":"idle"},{"scrub_state":"active"}]"#
            ),
            [r#"ACPI.NFIT: wait-scrub returned with scrub_state "active""#]
        );
        assert_eq!(
            scrub_not_idle("nfit_test.0", ""),
            ["nfit_test.0: wait-scrub listed no bus"]
        );
        let e = &scrub_not_idle("x", "garbage")[0];
        assert!(
            e.starts_with("x: wait-scrub output: ") && e.contains("not JSON"),
            "{e}"
        );
    }

    #[test]
    fn a_successful_clear_must_leave_nothing_in_any_view() {
        // Data starts 2 MiB (sector 4096) into the region.
        assert!(
            still_bad_after_clear(&snapshot(vec![], vec![], vec![]), &layout(), "fs").is_empty()
        );
        let left = still_bad_after_clear(
            &snapshot(vec![r(4104, 1)], vec![r(8, 1)], vec![r(8, 1)]),
            &layout(),
            "fs",
        );
        assert_eq!(
            left,
            [
                "clear-errors succeeded on namespace0.0 (`fs`) but its region still lists [8] in the namespace's data",
                "clear-errors succeeded on namespace0.0 but ndctl still lists [8]",
                "clear-errors succeeded on namespace0.0 but its block device still lists [8]",
            ]
        );
        // A badblock outside the namespace's data is not the clear's business.
        assert!(
            still_bad_after_clear(&snapshot(vec![r(10, 1)], vec![], vec![]), &layout(), "fs")
                .is_empty()
        );
    }

    #[test]
    fn expected_badblocks_are_checked_in_every_view() {
        let snap = snapshot(vec![r(4104, 2)], vec![r(8, 2)], vec![r(8, 1)]);
        let ns = Target::Namespace("fs".into());
        let e = check_badblocks(&snap, &layout(), &ns, &[r(8, 2)], true).unwrap();
        assert_eq!(
            e,
            "namespace0.0 (`fs`): expected badblocks [8+2] (exactly), but block device badblocks has [8]"
        );
        assert!(check_badblocks(&snap, &layout(), &ns, &[r(8, 1)], false).is_none());
        let region = Target::Region(0);
        assert!(check_badblocks(&snap, &layout(), &region, &[r(4104, 2)], true).is_none());
        assert_eq!(
            check_badblocks(&snap, &layout(), &Target::Region(3), &[], true).unwrap(),
            "no region for NVDIMM 3"
        );
    }
}
