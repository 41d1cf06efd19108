//! `cxl_inject_poison` and `expect_cxl_poison`: poison on a CXL type-3
//! device, put there by the host (QEMU's QMP) and read back through the
//! kernel's poison list.

use super::{Check, Checker, Kind, Scope};
use crate::cxl::{PoisonSource, LINE};
use crate::machine::QemuNeed;
use crate::size::ByteSize;
use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoisonEntry {
    /// Index into machine.cxl; default 0.
    pub device: Option<Spanned<usize>>,
    /// Device physical address, a multiple of 64.
    pub dpa: Spanned<ByteSize>,
    /// Default 64 (one line); a multiple of 64.
    pub length: Option<Spanned<ByteSize>>,
}

/// Poison on a device: where and how much.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CxlPoisonAt {
    pub device: usize,
    pub dpa: u64,
    pub length: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectPoisonEntry {
    /// Index into machine.cxl; default 0.
    pub device: Option<Spanned<usize>>,
    /// The device's whole poison list, in any order (`[]`: clean).
    pub records: Vec<Spanned<RecordEntry>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordEntry {
    pub dpa: ByteSize,
    /// Default 64.
    pub length: Option<ByteSize>,
    /// Default: any source.
    pub source: Option<PoisonSource>,
}

/// One record the list must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpectedRecord {
    pub dpa: u64,
    pub length: u64,
    pub source: Option<PoisonSource>,
}

/// A device's expected poison list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CxlPoisonCheck {
    pub device: usize,
    pub records: Vec<ExpectedRecord>,
}

pub struct CxlInjectPoison;
pub struct ExpectCxlPoison;

impl Kind for CxlInjectPoison {
    type Entry = PoisonEntry;
    type Checked = CxlPoisonAt;
    const QEMU: Option<QemuNeed> = Some(QemuNeed::CXL);
    const REFERENCE: &'static str = r#"
### `cxl_inject_poison`

```yaml
- cxl_inject_poison: {device: 0, dpa: 0x2000}              # one 64-byte line
- cxl_inject_poison: {dpa: 8K, length: 256}
```

| field | type | default | meaning |
|---|---|---|---|
| `device` | index into `machine.cxl` | `0` | the type-3 device |
| `dpa` | size | | device physical address, a multiple of 64 |
| `length` | size | `64` | a multiple of 64 |

The host puts poison on the device (QEMU's QMP `cxl-inject-poison`, QEMU
8.1): the device lists it (source `Internal`) the next time the kernel reads
its poison list; the kernel is not told. With `machine.poison`, the lab's
poison model also poisons the line at the device's host physical address
(the lab's own translation through the region that maps the DPA, if one
does), so a load there by any program or the kernel takes the machine check
a real device's poison would raise.
"#;
}

impl Check for CxlInjectPoison {
    fn check(
        ck: &mut Checker<'_>,
        scope: &Scope<'_>,
        entry: &Spanned<PoisonEntry>,
    ) -> Option<(String, CxlPoisonAt)> {
        let e = &entry.value;
        let device = device(ck, scope, &e.device, &entry.referenced)?;
        let length = e.length.as_ref().map_or(LINE, |l| l.value.bytes());
        let dpa = e.dpa.value.bytes();
        lines(ck, &e.dpa.referenced, dpa, length);
        let size = scope.machine.cxl[device].size.bytes();
        if dpa.saturating_add(length) > size {
            ck.error(
                &e.dpa.referenced,
                format!(
                    "{} bytes at DPA {dpa:#x} end past CXL device {device} ({})",
                    length,
                    ByteSize(size)
                ),
            );
        }
        Some((
            format!("cxl_inject_poison device {device} DPA {dpa:#x}"),
            CxlPoisonAt {
                device,
                dpa,
                length,
            },
        ))
    }
}

impl Kind for ExpectCxlPoison {
    type Entry = ExpectPoisonEntry;
    type Checked = CxlPoisonCheck;
    const QEMU: Option<QemuNeed> = Some(QemuNeed::CXL);
    const REFERENCE: &'static str = r#"
### `expect_cxl_poison`

```yaml
- expect_cxl_poison:
    device: 0
    records: [{dpa: 0x2000, length: 64, source: Internal}]
- expect_cxl_poison: {records: []}                          # clean
```

| field | type | default | meaning |
|---|---|---|---|
| `device` | index into `machine.cxl` | `0` | the type-3 device |
| `records` | list | | the whole poison list, in any order |
| `records[].dpa` | size | | device physical address |
| `records[].length` | size | `64` | bytes |
| `records[].source` | `Internal`, `Injected`, `External`, `Vendor`, `Unknown` | any | why the device lists it |

The lab asks the kernel for the device's poison list (writes
`trigger_poison_list` of its memdev) and reads the records back as
`cxl_poison` trace events (`trace_type=List`); that list must equal
`records`. For every record the kernel's host physical address must be the
lab's own translation of the DPA through the region that maps it (region
start, interleave ways, granularity and the device's position, read from
sysfs), or absent when no region maps it.
"#;
}

impl Check for ExpectCxlPoison {
    fn check(
        ck: &mut Checker<'_>,
        scope: &Scope<'_>,
        entry: &Spanned<ExpectPoisonEntry>,
    ) -> Option<(String, CxlPoisonCheck)> {
        let e = &entry.value;
        let device = device(ck, scope, &e.device, &entry.referenced)?;
        let records = e
            .records
            .iter()
            .map(|r| {
                let length = r.value.length.map_or(LINE, |l| l.bytes());
                lines(ck, &r.referenced, r.value.dpa.bytes(), length);
                ExpectedRecord {
                    dpa: r.value.dpa.bytes(),
                    length,
                    source: r.value.source,
                }
            })
            .collect();
        Some((
            format!("expect_cxl_poison device {device}"),
            CxlPoisonCheck { device, records },
        ))
    }
}

/// The device a step names, checked against machine.cxl.
fn device(
    ck: &mut Checker<'_>,
    scope: &Scope<'_>,
    device: &Option<Spanned<usize>>,
    at: &Location,
) -> Option<usize> {
    let (d, at) = device
        .as_ref()
        .map_or((0, *at), |d| (d.value, d.referenced));
    if d >= scope.machine.cxl.len() {
        let have = match scope.machine.cxl.len() {
            0 => "machine.cxl is empty".to_string(),
            n => format!("machine.cxl has {n}"),
        };
        ck.error(&at, format!("CXL device {d}: {have}"));
        return None;
    }
    Some(d)
}

/// DPA and length in whole 64-byte lines (the unit of poison records).
fn lines(ck: &mut Checker<'_>, at: &Location, dpa: u64, length: u64) {
    if !dpa.is_multiple_of(LINE) || length == 0 || !length.is_multiple_of(LINE) {
        ck.error(
            at,
            format!("poison is in 64-byte lines: DPA {dpa:#x} and length {length} must be multiples of 64 (length non-zero)"),
        );
    }
}
