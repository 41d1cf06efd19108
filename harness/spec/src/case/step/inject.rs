//! `inject`: a machine check at a location in case terms.

use super::{Check, Checker, Kind, Scope};
use crate::address::{Base, Location, Target};
use crate::mce;
use crate::size::ByteSize;
use serde::Deserialize;
use serde_saphyr::Spanned;

/// A machine check at a place in case terms: exactly one of `namespace` or
/// `region`, and an `offset`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectEntry {
    /// `scrub` (SRAO) for now; `load` (SRAR) needs a reader: see `consume`.
    pub kind: Spanned<mce::Kind>,
    pub namespace: Option<Spanned<String>>,
    /// A QEMU NVDIMM index: the location is in that NVDIMM's region.
    pub region: Option<Spanned<usize>>,
    pub offset: Spanned<ByteSize>,
    /// `data` (default): offset 0 is the first byte of the namespace's data;
    /// `start`: its first byte, metadata included.
    pub from: Option<Spanned<Base>>,
    /// vCPU that takes the machine check (default 0).
    pub cpu: Option<Spanned<u32>>,
}

/// A machine check to raise: what kind, where, on which CPU.
#[derive(Debug, Clone, PartialEq)]
pub struct InjectAt {
    pub kind: mce::Kind,
    pub at: Location,
    pub cpu: u32,
}

pub struct Inject;

impl Kind for Inject {
    type Entry = InjectEntry;
    type Checked = InjectAt;
    const REFERENCE: &'static str = r#"
### `inject`

```yaml
- inject: {kind: scrub, namespace: data, offset: 4M}
- inject: {kind: scrub, namespace: data, from: start, offset: 4K}   # the info block
- inject: {kind: scrub, region: 1, offset: 0x12340}                # NVDIMM 1's region
```

| field | type | default | meaning |
|---|---|---|---|
| `kind` | `scrub` | required | what to emulate; see below |
| `namespace` | name | | a namespace of `setup` ... |
| `region` | NVDIMM index | | ... or the region of that NVDIMM (exactly one of the two) |
| `offset` | size | required | byte offset, a multiple of 64 (a machine check names a cache line) |
| `from` | `data`, `start` | `data` | namespace only. `start`: offset 0 is the namespace's first byte (metadata included). `data`: offset 0 is the first byte of the namespace's data: a devdax namespace's dax device offset 0 (after the info block and memmap), an fsdax namespace's block device offset 0 (likewise), a raw namespace's first byte; a sector (BTT) namespace has no fixed data start (its map places each LBA anywhere in the arena), so there `data` is its first byte too, the same as `start` |
| `cpu` | vCPU index | 0 | the CPU that takes the machine check |

The lab translates the location with the layout it read from the guest
(region, namespace and data start addresses) into a guest-physical address,
has QEMU raise the machine check (`mce`, broadcast when the VM has several
vCPUs), and waits for QEMU's `MEMORY_FAILURE` event and for the region's
`badblocks` to list the sector. The step log (`steps.log`) shows the exact
`mce` command, the address, and the region and namespace sectors.

Kinds:

- `scrub`: the patrol scrubber found an uncorrectable error (SRAO: software
  recoverable, action optional). Linux logs it, nfit adds a badblock to the
  region, memory_failure() handles the page.
- `load` (SRAR, a load consumed poison) is refused here: it must hit a task
  that is reading the line at that moment; on an idle CPU it panics the
  guest. The `consume` step injects it.
- Corrected and UCNA errors are not offered: nfit ignores correctable errors,
  and QEMU records them without an interrupt, so the guest would only see them
  on its five-minute poll.

The bit encodings are in `harness/spec/src/mce.rs`, each bit documented.
"#;
}

/// An injection's offset names a whole cache line, inside what the raw
/// sizes say of the target.
fn offset_fits(
    ck: &mut Checker<'_>,
    scope: &Scope<'_>,
    at: &Spanned<ByteSize>,
    target: Option<&Target>,
) {
    let offset = at.value.bytes();
    if !offset.is_multiple_of(mce::GRANULE) {
        ck.error(
            &at.referenced,
            format!(
                "offset {:#x} is not a multiple of {} bytes: a machine check names a whole cache line",
                offset,
                mce::GRANULE
            ),
        );
    }
    // The exact bound (the data size) is only known in the VM; what the
    // raw sizes already rule out is an error now.
    let limit = match target {
        Some(Target::Namespace(n)) => scope
            .namespaces
            .iter()
            .find(|x| &x.name == n)
            .map(|x| x.size.bytes()),
        Some(Target::Region(i)) => scope.machine.nvdimms.get(*i).map(|nv| nv.region_size()),
        None => None,
    };
    if let Some(limit) = limit {
        if offset >= limit {
            ck.error(
                &at.referenced,
                format!(
                    "offset {} is beyond the target's {} bytes",
                    at.value,
                    ByteSize(limit)
                ),
            );
        }
    }
}

impl Check for Inject {
    fn check(
        ck: &mut Checker<'_>,
        scope: &Scope<'_>,
        entry: &Spanned<InjectEntry>,
    ) -> Option<(String, InjectAt)> {
        let e = &entry.value;
        let kind = match e.kind.value {
            mce::Kind::Load => {
                ck.error(
                    &e.kind.referenced,
                    "kind `load` (SRAR) must hit a task that is reading the line: a `consume` step injects it; \
                     on an idle CPU it panics the guest",
                );
                None
            }
            k @ mce::Kind::Scrub => Some(k),
        };
        let target = ck.target(
            &e.kind.referenced,
            &e.namespace,
            &e.region,
            scope.machine,
            scope.namespaces,
        );
        let base = match &e.from {
            None => Base::Data,
            Some(f) => {
                if f.value == Base::Start && e.namespace.is_none() {
                    ck.error(&f.referenced, "`from: start` applies to a namespace");
                }
                f.value
            }
        };
        let offset = e.offset.value.bytes();
        offset_fits(ck, scope, &e.offset, target.as_ref());
        let cpu = ck.cpu(&e.cpu, scope.machine);
        Some((
            format!("inject {}", e.kind.value.name()),
            InjectAt {
                kind: kind?,
                at: Location {
                    target: target?,
                    offset,
                    base,
                },
                cpu,
            },
        ))
    }
}
