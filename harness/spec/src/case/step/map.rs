//! `map` and `unmap`: named mappings of device-dax in the agent.

use super::{Check, Checker, Kind, Scope};
use crate::namespace::NamespaceMode;
use crate::size::{ByteSize, MIB};
use serde::Deserialize;
use serde_saphyr::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapEntry {
    pub name: Spanned<String>,
    pub namespace: Spanned<String>,
    /// Offset into the dax device; a multiple of its align.
    #[serde(default)]
    pub offset: Option<Spanned<ByteSize>>,
    pub length: Spanned<ByteSize>,
}

/// A window of a devdax namespace to mmap under a name.
#[derive(Debug, Clone, PartialEq)]
pub struct MapSpec {
    pub name: String,
    pub namespace: String,
    pub offset: u64,
    pub length: u64,
}

pub struct Map;
pub struct Unmap;

impl Kind for Map {
    type Entry = MapEntry;
    type Checked = MapSpec;
    const REFERENCE: &'static str = r#"
### `map`

The agent keeps named mappings of dax devices; steps refer to them by name.
See [devdax.md](devdax.md) for what these cases prove.

```yaml
- map: {name: m, namespace: data, offset: 4M, length: 8M}  # mmap MAP_SHARED
```

| field | default | meaning |
|---|---|---|
| `name` | required | the mapping's name for later steps; unique while mapped |
| `namespace` | required | a devdax namespace of `setup` |
| `offset` | 0 | into the dax device; a multiple of the namespace's align |
| `length` | required | a multiple of the align; the window must fit in the namespace |

mmap of `/dev/daxX.Y`, MAP_SHARED.
"#;
}

impl Check for Map {
    fn check(
        ck: &mut Checker<'_>,
        scope: &Scope<'_>,
        m: &Spanned<MapEntry>,
    ) -> Option<(String, MapSpec)> {
        let name = m.value.name.value.clone();
        let ns = ck.namespace(
            &m.value.namespace.value,
            &m.value.namespace.referenced,
            scope.namespaces,
        )?;
        if ns.mode != NamespaceMode::Devdax {
            ck.error(
                &m.value.namespace.referenced,
                format!(
                    "namespace `{}` is {}: `map` maps device-dax",
                    ns.name,
                    ns.mode.ndctl_name()
                ),
            );
        }
        let align = ns.align.unwrap_or(ByteSize(2 * MIB));
        let offset = m.value.offset.as_ref().map(|o| o.value).unwrap_or_default();
        let length = m.value.length.value;
        for (what, v, at) in [
            (
                "offset",
                offset,
                m.value
                    .offset
                    .as_ref()
                    .map(|o| o.referenced)
                    .unwrap_or(m.referenced),
            ),
            ("length", length, m.value.length.referenced),
        ] {
            if !v.is_multiple_of(align) {
                ck.error(&at, format!("{what} {v} is not a multiple of the device's align {align}: device-dax maps whole pages of its size"));
            }
        }
        let end = offset.bytes().checked_add(length.bytes());
        if length.bytes() == 0 || end.is_none_or(|end| end > ns.size.bytes()) {
            ck.error(
                &m.value.length.referenced,
                format!(
                    "{offset}+{length} does not fit in namespace `{}` ({})",
                    ns.name, ns.size
                ),
            );
        }
        if ck.maps.insert(name.clone(), length.bytes()).is_some() {
            ck.error(
                &m.value.name.referenced,
                format!("mapping `{name}` already exists: unmap it first"),
            );
        }
        let spec = MapSpec {
            name: name.clone(),
            namespace: ns.name.clone(),
            offset: offset.bytes(),
            length: length.bytes(),
        };
        Some((format!("map {name}"), spec))
    }
}

impl Kind for Unmap {
    type Entry = String;
    type Checked = String;
    const REFERENCE: &'static str = r#"
### `unmap`

```yaml
- unmap: m
```

munmap of a mapping made by an earlier `map`.
"#;
}

impl Check for Unmap {
    fn check(
        ck: &mut Checker<'_>,
        _scope: &Scope<'_>,
        u: &Spanned<String>,
    ) -> Option<(String, String)> {
        if ck.maps.remove(&u.value).is_none() {
            ck.error(&u.referenced, format!("no mapping `{}` to unmap", u.value));
        }
        Some((format!("unmap {}", u.value), u.value.clone()))
    }
}
