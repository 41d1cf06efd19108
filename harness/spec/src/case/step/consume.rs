//! `consume` and `poison`: an error at a place of a mapping, met by a
//! reader the agent runs.

use super::{Check, Checker, Kind, Scope};
use crate::mce;
use crate::size::ByteSize;
use serde::Deserialize;
use serde_saphyr::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumeEntry {
    pub map: Spanned<String>,
    /// Offset into the mapping.
    pub offset: Spanned<ByteSize>,
    /// CPU the reader is pinned to (the machine check is taken there).
    /// Default 0.
    pub cpu: Option<Spanned<u32>>,
}

/// A place of a mapping and the CPU that meets the error there.
#[derive(Debug, Clone, PartialEq)]
pub struct LineSpec {
    pub map: String,
    pub offset: u64,
    pub cpu: u32,
}

pub struct Consume;
pub struct Poison;

impl Kind for Consume {
    type Entry = ConsumeEntry;
    type Checked = LineSpec;
    const REPORTS_SIGNAL: bool = true;
    const REFERENCE: &'static str = r#"
### `consume`

```yaml
- consume: {map: m, offset: 0x401040, cpu: 0}   # poison the line, load it
  expect:
    signal: {name: SIGBUS, code: BUS_MCEERR_AR, offset: 4M, lsb: 21}
```

| field | default | meaning |
|---|---|---|
| `map` | required | a live mapping |
| `offset` | required | into the mapping, a multiple of 64 (a cache line) |
| `cpu` | 0 | the vCPU the reader is pinned to, where the load takes the machine check |

The lab poisons the line in its poison model (docs/poison.md; the model
starts at this step on a machine without `poison: true`), then a child
process pinned to `cpu` loads it once. The model stops that vCPU at the
load and raises the data-load machine check (SRAR) there, so the child gets
SIGBUS. `expect.signal` is `none` or a map: `name` (`SIGBUS`, the default),
`code` (`BUS_MCEERR_AR`, `BUS_MCEERR_AO`, ...), `offset` (si_addr as an
offset into the mapping), `lsb` (si_addr_lsb).

The line stays poisoned until the platform clears it (`clear`,
`ndctl clear-errors`): a later load of it, by the agent or any program,
takes a machine check again.

Earlier versions had the child spin on the line while the lab stopped the
VM, checked the CPU's RIP and mode, and injected only when it found the
CPU on the loop (600 of 600 on one and two vCPUs; a naive injection that
found the CPU in the kernel panicked the guest at the 5th and 17th round).
The watch point stops the CPU exactly at the load, so there is no window
to miss; `devdax/consume-reliability` keeps the figure.
"#;
}

impl Check for Consume {
    fn check(
        ck: &mut Checker<'_>,
        scope: &Scope<'_>,
        c: &Spanned<ConsumeEntry>,
    ) -> Option<(String, LineSpec)> {
        read_line(ck, scope, c, true)
    }
}

impl Kind for Poison {
    type Entry = ConsumeEntry;
    type Checked = LineSpec;
    const REPORTS_SIGNAL: bool = true;
    const REFERENCE: &'static str = r#"
### `poison`

```yaml
- poison: {map: m, offset: 0x201000}     # madvise(MADV_HWPOISON)
  expect: {signal: {code: BUS_MCEERR_AR}}
```

Fields as for `consume`. A child pinned to `cpu` calls
madvise(MADV_HWPOISON) on the page (the kernel's software injector);
`expect.signal` checks what it received.
"#;
}

impl Check for Poison {
    fn check(
        ck: &mut Checker<'_>,
        scope: &Scope<'_>,
        c: &Spanned<ConsumeEntry>,
    ) -> Option<(String, LineSpec)> {
        read_line(ck, scope, c, false)
    }
}

/// `consume` (a machine check at a line the reader loads) or `poison`
/// (MADV_HWPOISON of the page): a place inside a live mapping.
fn read_line(
    ck: &mut Checker<'_>,
    scope: &Scope<'_>,
    c: &Spanned<ConsumeEntry>,
    consume: bool,
) -> Option<(String, LineSpec)> {
    let len = ck.map_len(&c.value.map)?;
    if consume && ck.file_maps.contains(&c.value.map.value) {
        ck.error(
            &c.value.map.referenced,
            format!(
                "mapping `{}` maps a file: `consume` needs a device-dax mapping, whose offset the lab translates to a physical address",
                c.value.map.value
            ),
        );
    }
    let offset = c.value.offset.value.bytes();
    if offset >= len {
        ck.error(
            &c.value.offset.referenced,
            format!(
                "offset {offset:#x} is outside mapping `{}` ({len:#x} bytes)",
                c.value.map.value
            ),
        );
    }
    if consume && !offset.is_multiple_of(mce::GRANULE) {
        ck.error(&c.value.offset.referenced, format!("offset {offset:#x} is not a multiple of {}: a machine check names a whole cache line", mce::GRANULE));
    }
    let cpu = ck.cpu(&c.value.cpu, scope.machine);
    let map = c.value.map.value.clone();
    let verb = if consume { "consume" } else { "poison" };
    Some((format!("{verb} {map}"), LineSpec { map, offset, cpu }))
}
