//! `touch`: fault every page of a window of a mapping in, counting faults.

use super::{Check, Checker, Kind, Scope};
use crate::size::ByteSize;
use serde::Deserialize;
use serde_saphyr::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TouchEntry {
    pub map: Spanned<String>,
    #[serde(default)]
    pub offset: Option<Spanned<ByteSize>>,
    /// Default: to the end of the mapping.
    pub length: Option<Spanned<ByteSize>>,
    pub cpu: Option<Spanned<u32>>,
}

/// A window of a mapping to fault in page by page.
#[derive(Debug, Clone, PartialEq)]
pub struct TouchSpec {
    pub map: String,
    pub offset: u64,
    pub length: u64,
    pub cpu: Option<u32>,
}

pub struct Touch;

impl Kind for Touch {
    type Entry = TouchEntry;
    type Checked = TouchSpec;
    const COUNTS_FAULTS: bool = true;
    const REFERENCE: &'static str = r#"
### `touch`

```yaml
- touch: {map: m}                        # fault every 4 KiB in; count minor faults
  expect: {faults: 4}
```

| field | default | meaning |
|---|---|---|
| `map` | required | a live mapping |
| `offset` | 0 | into the mapping |
| `length` | to the end | bytes to walk |
| `cpu` | any | pin the reader to this vCPU |

Faults every 4 KiB page in as a read would, with
`madvise(MADV_POPULATE_READ)`, which takes the same read faults (device-dax
at its alignment) but loads no data: a window over a poisoned line is mapped
without consuming it (a load of every page would, as on hardware: use
`consume` or a program for that). `expect.faults` checks the minor faults
(getrusage; GUP's faults count there too, mm/memory.c mm_account_fault()).
"#;
}

impl Check for Touch {
    fn check(
        ck: &mut Checker<'_>,
        scope: &Scope<'_>,
        t: &Spanned<TouchEntry>,
    ) -> Option<(String, TouchSpec)> {
        let len = ck.map_len(&t.value.map)?;
        let offset = super::super::load::bytes(&t.value.offset).unwrap_or(0);
        let length =
            super::super::load::bytes(&t.value.length).unwrap_or(len.saturating_sub(offset));
        let at = t
            .value
            .length
            .as_ref()
            .map(|l| l.referenced)
            .unwrap_or(t.referenced);
        if offset.checked_add(length).is_none_or(|end| end > len) || length == 0 {
            ck.error(
                &at,
                format!(
                    "touch window {offset:#x}+{length:#x} is outside mapping `{}` ({len:#x} bytes)",
                    t.value.map.value
                ),
            );
        }
        let cpu = ck.cpu(&t.value.cpu, scope.machine);
        let spec = TouchSpec {
            map: t.value.map.value.clone(),
            offset,
            length,
            cpu: t.value.cpu.as_ref().map(|_| cpu),
        };
        Some((format!("touch {}", t.value.map.value), spec))
    }
}
