//! `reconfigure`: change a namespace's mode in place (ndctl
//! create-namespace --reconfig), between raw, fsdax and sector, and go on with the
//! namespace's new data frame.

use super::{Check, Checker, Kind, Scope};
use crate::namespace::NamespaceMode;
use crate::size::ByteSize;
use serde::Deserialize;
use serde_saphyr::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconfigureEntry {
    pub namespace: Spanned<String>,
    /// `raw`, `fsdax` or `sector`: each keeps a block device, so every
    /// placeholder of the case stays good.
    pub mode: Spanned<NamespaceMode>,
    /// fsdax only: 4K, 2M or 1G.
    pub align: Option<Spanned<ByteSize>>,
}

/// A namespace to turn into another mode.
#[derive(Debug, Clone, PartialEq)]
pub struct ReconfigureSpec {
    pub namespace: String,
    pub mode: NamespaceMode,
    pub align: Option<ByteSize>,
}

pub struct Reconfigure;

impl Kind for Reconfigure {
    type Entry = ReconfigureEntry;
    type Checked = ReconfigureSpec;
    const REFERENCE: &'static str = r#"
### `reconfigure`

```yaml
- reconfigure: {namespace: r, mode: fsdax, align: 2M}
```

| field | default | meaning |
|---|---|---|
| `namespace` | required | a raw, fsdax or sector namespace of `setup` |
| `mode` | required | `raw`, `fsdax` or `sector` (each keeps a block device, so placeholders stay good) |
| `align` | ndctl's | fsdax only: `4K`, `2M` or `1G` |

`ndctl create-namespace --force --reconfig=DEV --mode=MODE`: the namespace
keeps its place in the region, its data now starts after the new metadata
(fsdax: the info block and the memmap), and the lab reads the layout again,
so later steps, `expect_badblocks` and the oracle count from the new data
start.
"#;
}

impl Check for Reconfigure {
    fn check(
        ck: &mut Checker<'_>,
        scope: &Scope<'_>,
        r: &Spanned<ReconfigureEntry>,
    ) -> Option<(String, ReconfigureSpec)> {
        let e = &r.value;
        let ns = ck.namespace(
            &e.namespace.value,
            &e.namespace.referenced,
            scope.namespaces,
        )?;
        let movable = [
            NamespaceMode::Raw,
            NamespaceMode::Fsdax,
            NamespaceMode::Sector,
        ];
        if !movable.contains(&ns.mode) {
            ck.error(
                &e.namespace.referenced,
                format!(
                    "namespace `{}` is {}: `reconfigure` moves between raw, fsdax and sector",
                    ns.name,
                    ns.mode.ndctl_name()
                ),
            );
        }
        if !movable.contains(&e.mode.value) {
            ck.error(
                &e.mode.referenced,
                "`reconfigure` moves between raw, fsdax and sector (each keeps a block device, which the case's placeholders name)",
            );
        }
        let name = ns.name.clone();
        let align = ck.mode_align(e.mode.value, e.align.as_ref());
        if let (Some(a), Some((start, size))) = (align, Checker::extent(ns, scope.machine)) {
            if let Some(why) = crate::namespace::pfn_align_problem(start, size, a.bytes()) {
                let at = e
                    .align
                    .as_ref()
                    .map(|a| a.referenced)
                    .unwrap_or(e.mode.referenced);
                ck.error(&at, format!("namespace `{name}`: {why}"));
            }
        }
        Some((
            format!("reconfigure {name} to {}", e.mode.value.ndctl_name()),
            ReconfigureSpec {
                namespace: name,
                mode: e.mode.value,
                align,
            },
        ))
    }
}
