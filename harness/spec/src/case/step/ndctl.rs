//! `inject_error`, `scrub`, `clear`: error handling through the bus, with
//! ndctl; their results are checked like `run`'s.

use super::{Check, Checker, Kind, Scope};
use crate::namespace::Bus;
use crate::size::ByteSize;
use serde::Deserialize;
use serde_saphyr::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectErrorEntry {
    pub namespace: Spanned<String>,
    /// 512-byte block of the namespace data (ndctl's --block) ...
    pub block: Option<Spanned<u64>>,
    /// ... or the block holding byte `offset` of this file (on an fsdax
    /// mount of the namespace), found with FIEMAP when the step runs.
    pub file: Option<Spanned<String>>,
    pub offset: Option<Spanned<ByteSize>>,
    /// Number of blocks (default 1).
    pub count: Option<Spanned<u64>>,
    /// Remove the injected error instead (`--uninject`).
    #[serde(default)]
    pub uninject: bool,
    /// `false`: `--no-notify`, the platform does not tell the kernel, which
    /// learns of the error at the next scrub. Default true (ndctl waits for
    /// the scrub the notification starts).
    pub notify: Option<Spanned<bool>>,
    /// Only list the injected errors (`--status`).
    #[serde(default)]
    pub status: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClearEntry {
    pub namespace: Spanned<String>,
    /// Scrub first (`--scrub`).
    #[serde(default)]
    pub scrub: bool,
}

/// The ndctl error-handling commands a case can name as steps.
#[derive(Debug, Clone, PartialEq)]
pub enum NdctlOp {
    InjectError {
        namespace: String,
        block: u64,
        count: u64,
        uninject: bool,
        /// Ask the platform to notify the kernel (ndctl's default), which
        /// then scrubs; `false` passes `--no-notify`.
        notify: bool,
        /// Aim at byte `.1` of file `.0` instead of `block` (resolved in the
        /// guest with FIEMAP).
        file: Option<(String, u64)>,
    },
    InjectStatus {
        namespace: String,
    },
    /// start-scrub, then wait-scrub (the step checks wait-scrub's output).
    Scrub {
        bus: String,
    },
    /// clear-errors; on success the lab also requires that no layer still
    /// lists a badblock in the namespace.
    Clear {
        namespace: String,
        scrub: bool,
    },
}

impl NdctlOp {
    /// The command line, given the kernel's name for the namespace.
    pub fn argv(&self, dev: impl Fn(&str) -> String) -> Vec<String> {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        match self {
            NdctlOp::InjectError {
                namespace,
                block,
                count,
                uninject,
                notify,
                ..
            } => {
                let mut a = v(&[
                    "ndctl",
                    "inject-error",
                    &format!("--block={block}"),
                    &format!("--count={count}"),
                ]);
                if *uninject {
                    a.push("--uninject".into());
                } else if !*notify {
                    a.push("--no-notify".into());
                }
                a.push(dev(namespace));
                a
            }
            NdctlOp::InjectStatus { namespace } => {
                v(&["ndctl", "inject-error", "--status", &dev(namespace)])
            }
            NdctlOp::Scrub { bus } => v(&["ndctl", "wait-scrub", bus]),
            NdctlOp::Clear { namespace, scrub } => {
                let mut a = v(&["ndctl", "clear-errors"]);
                if *scrub {
                    a.push("--scrub".into());
                }
                a.push(dev(namespace));
                a
            }
        }
    }
}

pub struct InjectError;
pub struct Scrub;
pub struct Clear;

/// The step, named by its command line.
fn named(op: NdctlOp) -> (String, NdctlOp) {
    (op.argv(|ns| format!("<{ns}>")).join(" "), op)
}

impl Kind for InjectError {
    type Entry = InjectErrorEntry;
    type Checked = NdctlOp;
    const RUNS_COMMAND: bool = true;
    const REFERENCE: &'static str = r#"
### `inject_error`

```yaml
- inject_error: {namespace: t, block: 8, count: 2}        # ndctl inject-error
- inject_error: {namespace: t, block: 9, notify: false}   # --no-notify
- inject_error: {namespace: t, block: 8, uninject: true}  # --uninject
- inject_error: {namespace: t, status: true}              # --status
  expect:
    json: {badblocks: [{block: 8, count: 2}]}
- inject_error: {namespace: fs, file: /mnt/fs/victim, offset: 4K, count: 8}
```

| field | default | meaning |
|---|---|---|
| `namespace` | required | a namespace of `setup` |
| `block` | | a 512-byte block of the namespace data (ndctl's `--block`) ... |
| `file`, `offset` | | ... or the block that holds byte `offset` of this file, found with FIEMAP in the guest when the step runs (the extent's physical offset counts from the block device's start, the namespace data start) |
| `count` | 1 | blocks |
| `uninject` | false | remove the injected error instead (`--uninject`) |
| `status` | false | only list the injected errors (`--status`) |
| `notify` | true | `false` passes `--no-notify`: the kernel learns of the error at the next scrub |

`ndctl inject-error`, checked like a `run` step (`expect.exit`, `stdout`,
`stderr`, `json`). These bus steps work on the nfit_test buses and, through
the lab's ACPI table, on QEMU's NVDIMMs (the `ACPI.NFIT` bus,
[acpi.md](acpi.md)). With `root_dsm: qemu` QEMU implements none of these
DSMs and ndctl fails (ndctl issue 206), which a case may assert with
`expect.exit: nonzero` (`cases/ars/stock-qemu.yaml`). A case with
`machine.nfit_test` on a kernel without the nfit_test modules, or whose
config lacks what nfit_test needs (LIBNVDIMM, BLK_DEV_PMEM, ND_BTT, ND_PFN,
DEV_DAX, DEV_DAX_PMEM as modules), fails before boot with the reason.
"#;
}

impl Check for InjectError {
    fn check(
        ck: &mut Checker<'_>,
        scope: &Scope<'_>,
        e: &Spanned<InjectErrorEntry>,
    ) -> Option<(String, NdctlOp)> {
        let namespace = e.value.namespace.value.clone();
        ck.namespace(&namespace, &e.value.namespace.referenced, scope.namespaces);
        if e.value.status {
            if let Some(b) = &e.value.block {
                ck.error(
                    &b.referenced,
                    "`status: true` lists injected errors: no `block`",
                );
            }
            return Some(named(NdctlOp::InjectStatus { namespace }));
        }
        let (block, file) = match (&e.value.block, &e.value.file) {
            (Some(b), None) => (b.value, None),
            (None, Some(f)) => (
                0,
                Some((
                    f.value.clone(),
                    super::super::load::bytes(&e.value.offset).unwrap_or(0),
                )),
            ),
            _ => {
                ck.error(
                    &e.referenced,
                    "inject_error needs `block` (a 512-byte block of the namespace data) or `file` (+ `offset`)",
                );
                return None;
            }
        };
        if let (Some(o), None) = (&e.value.offset, &e.value.file) {
            ck.error(&o.referenced, "`offset` goes with `file`");
        }
        let count = match &e.value.count {
            Some(c) if c.value == 0 => {
                ck.error(&c.referenced, "count must be at least 1");
                1
            }
            Some(c) if block.checked_add(c.value).is_none() => {
                ck.error(&c.referenced, "block + count overflows 64 bits");
                1
            }
            Some(c) => c.value,
            None => 1,
        };
        if let Some(n) = e.value.notify.as_ref().filter(|_| e.value.uninject) {
            ck.error(
                &n.referenced,
                "`notify` goes with an injection, not `uninject`",
            );
        }
        Some(named(NdctlOp::InjectError {
            namespace,
            block,
            count,
            uninject: e.value.uninject,
            notify: e.value.notify.as_ref().is_none_or(|n| n.value),
            file,
        }))
    }
}

impl Kind for Scrub {
    type Entry = Bus;
    type Checked = NdctlOp;
    const RUNS_COMMAND: bool = true;
    const REFERENCE: &'static str = r#"
### `scrub`

```yaml
- scrub: nfit_test.0                                      # start-scrub + wait-scrub
- scrub: ACPI.NFIT                                        # QEMU's NVDIMMs
```

A bus name (`ACPI.NFIT`, `nfit_test.0`, `nfit_test.1`): `ndctl start-scrub`
(must succeed), then `ndctl wait-scrub`, checked like `run`; every bus it
lists must be back to `idle`.
"#;
}

impl Check for Scrub {
    fn check(
        _ck: &mut Checker<'_>,
        _scope: &Scope<'_>,
        bus: &Spanned<Bus>,
    ) -> Option<(String, NdctlOp)> {
        Some(named(NdctlOp::Scrub {
            bus: bus.value.name().to_string(),
        }))
    }
}

impl Kind for Clear {
    type Entry = ClearEntry;
    type Checked = NdctlOp;
    const RUNS_COMMAND: bool = true;
    const REFERENCE: &'static str = r#"
### `clear`

```yaml
- clear: {namespace: t}                                   # ndctl clear-errors
- clear: {namespace: t, scrub: true}                      # clear-errors --scrub
```

`ndctl clear-errors` on a namespace (`scrub: true` scrubs first), checked
like `run`. If it exits 0, no layer may still list a badblock in the
namespace: region (in the namespace's data range), ndctl, block device. That
is the check ndctl issue 158 ("clear reported success but badblocks remain")
would have needed. `clear-errors` disables the namespace while it works:
unmount a filesystem first (`cases/clear/fsdax-s7.yaml`).
"#;
}

impl Check for Clear {
    fn check(
        ck: &mut Checker<'_>,
        scope: &Scope<'_>,
        c: &Spanned<ClearEntry>,
    ) -> Option<(String, NdctlOp)> {
        ck.namespace(
            &c.value.namespace.value,
            &c.value.namespace.referenced,
            scope.namespaces,
        );
        Some(named(NdctlOp::Clear {
            namespace: c.value.namespace.value.clone(),
            scrub: c.value.scrub,
        }))
    }
}
