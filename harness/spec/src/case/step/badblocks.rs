//! `expect_badblocks`: the badblocks of a region or namespace, through every
//! view the kernel offers.

use super::{Check, Checker, Kind, Scope};
use crate::address::Target;
use crate::badblocks::{self, Range, SECTOR};
use crate::size::ByteSize;
use serde::Deserialize;
use serde_saphyr::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BadblocksEntry {
    pub namespace: Option<Spanned<String>>,
    pub region: Option<Spanned<usize>>,
    /// Sectors (512 bytes) in the frame of the namespace data or the region.
    #[serde(default)]
    pub sectors: Vec<SectorEntry>,
    /// Byte offsets in the same frame; each names the sector holding it.
    #[serde(default)]
    pub offsets: Vec<ByteSize>,
    /// `exact` (default) or `contains`.
    pub r#match: Option<Spanned<MatchMode>>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum SectorEntry {
    One(u64),
    Range { sector: u64, count: u64 },
}

/// `match:` of expect_badblocks.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MatchMode {
    /// The lists must be equal (the default).
    Exact,
    /// The target must list at least these.
    Contains,
}

/// The expected badblocks of a target.
#[derive(Debug, Clone, PartialEq)]
pub struct BadblocksCheck {
    pub target: Target,
    /// Normalised: sorted, adjacent and overlapping ranges merged.
    pub ranges: Vec<Range>,
    /// `false`: the target must list at least these.
    pub exact: bool,
}

pub struct ExpectBadblocks;

impl Kind for ExpectBadblocks {
    type Entry = BadblocksEntry;
    type Checked = BadblocksCheck;
    const REFERENCE: &'static str = r#"
### `expect_badblocks`

```yaml
- expect_badblocks: {namespace: data, sectors: [8200]}
- expect_badblocks: {region: 0, sectors: [{sector: 22528, count: 2}, 634880]}
- expect_badblocks: {namespace: data, offsets: [4M], match: contains}
- expect_badblocks: {namespace: data, sectors: []}          # clean
```

| field | type | default | meaning |
|---|---|---|---|
| `namespace` / `region` | name / NVDIMM index | | the target (exactly one) |
| `sectors` | list | `[]` | 512-byte sectors: a number, or `{sector, count}` |
| `offsets` | list of sizes | `[]` | byte offsets; each names the sector holding it |
| `match` | `exact`, `contains` | `exact` | the lists must be equal, or the target must list at least these |

Frames: a namespace counts from its data start (what the pmem block device's
`badblocks` and `ndctl list --media-errors` show, "fixed up for dev dax");
a region from its own start. Both lists are normalised (sorted, adjacent and
overlapping ranges merged) before comparing. Every view of the target must
agree: for a region, sysfs `regionN/badblocks` and ndctl; for a namespace,
ndctl and, for raw and fsdax, the block device's `badblocks` (device-dax has
none: S4).
"#;
}

impl Check for ExpectBadblocks {
    fn check(
        ck: &mut Checker<'_>,
        scope: &Scope<'_>,
        b: &Spanned<BadblocksEntry>,
    ) -> Option<(String, BadblocksCheck)> {
        let e = &b.value;
        let target = ck.target(
            &b.referenced,
            &e.namespace,
            &e.region,
            scope.machine,
            scope.namespaces,
        );
        let exact = e
            .r#match
            .as_ref()
            .is_none_or(|m| m.value == MatchMode::Exact);
        let mut ranges: Vec<Range> = e
            .sectors
            .iter()
            .map(|s| match s {
                SectorEntry::One(n) => Range {
                    sector: *n,
                    count: 1,
                },
                SectorEntry::Range { sector, count } => Range {
                    sector: *sector,
                    count: *count,
                },
            })
            .collect();
        ranges.extend(e.offsets.iter().map(|o| Range {
            sector: o.bytes() / SECTOR,
            count: 1,
        }));
        Some((
            "expect_badblocks".to_string(),
            BadblocksCheck {
                target: target?,
                ranges: badblocks::normalize(ranges),
                exact,
            },
        ))
    }
}
