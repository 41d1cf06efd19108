//! `map` and `unmap`: named mappings in the agent, of a device-dax
//! namespace or of a file (on an fsdax mount, say).

use super::{Check, Checker, Kind, Scope};
use crate::namespace::NamespaceMode;
use crate::size::{ByteSize, KIB, MIB};
use serde::Deserialize;
use serde_saphyr::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapEntry {
    pub name: Spanned<String>,
    /// A devdax namespace of setup ...
    pub namespace: Option<Spanned<String>>,
    /// ... or a file in the guest (an absolute path): exactly one.
    pub file: Option<Spanned<String>>,
    /// Offset into the dax device (a multiple of its align) or the file (of
    /// 4K).
    #[serde(default)]
    pub offset: Option<Spanned<ByteSize>>,
    pub length: Spanned<ByteSize>,
}

/// A window of a devdax namespace or of a file to mmap under a name.
#[derive(Debug, Clone, PartialEq)]
pub struct MapSpec {
    pub name: String,
    pub what: Mapped,
    pub offset: u64,
    pub length: u64,
}

/// What a mapping maps.
#[derive(Debug, Clone, PartialEq)]
pub enum Mapped {
    /// A devdax namespace of setup, by name.
    Namespace(String),
    /// A guest file, by absolute path.
    File(String),
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
| `namespace` | | a devdax namespace of `setup` ... |
| `file` | | ... or a guest file (absolute path), e.g. on an fsdax mount: exactly one of the two |
| `offset` | 0 | into the dax device (a multiple of the namespace's align) or the file (of 4K) |
| `length` | required | a multiple of the same; a namespace window must fit in the namespace |

mmap of `/dev/daxX.Y` or of the file, MAP_SHARED, read and write. `consume`
needs a namespace mapping (the lab translates its offset to a physical
address); `touch`, `poison` and `signals` work on both.

```yaml
- map: {name: f, file: /mnt/fs/victim, length: 4M}
```
"#;
}

/// What a `map` maps (a device-dax namespace or a file), the size its
/// offset and length go by, and the namespace that bounds it.
fn mapped<'s>(
    ck: &mut Checker<'_>,
    scope: &Scope<'s>,
    m: &Spanned<MapEntry>,
) -> Option<(Mapped, ByteSize, Option<&'s crate::case::NamespaceSpec>)> {
    Some(match (&m.value.namespace, &m.value.file) {
        (Some(n), None) => {
            let ns = ck.namespace(&n.value, &n.referenced, scope.namespaces)?;
            if ns.mode != NamespaceMode::Devdax {
                ck.error(
                    &n.referenced,
                    format!(
                        "namespace `{}` is {}: `map` maps device-dax (for fsdax, map a file on its mount)",
                        ns.name,
                        ns.mode.ndctl_name()
                    ),
                );
            }
            let align = ns.align.unwrap_or(ByteSize(2 * MIB));
            (Mapped::Namespace(ns.name.clone()), align, Some(ns))
        }
        (None, Some(f)) => {
            if !f.value.starts_with('/') {
                ck.error(&f.referenced, "`file` is an absolute guest path");
            }
            (Mapped::File(f.value.clone()), ByteSize(4 * KIB), None)
        }
        _ => {
            ck.error(&m.referenced, "name exactly one of `namespace` or `file`");
            return None;
        }
    })
}

impl Check for Map {
    fn check(
        ck: &mut Checker<'_>,
        scope: &Scope<'_>,
        m: &Spanned<MapEntry>,
    ) -> Option<(String, MapSpec)> {
        let name = m.value.name.value.clone();
        let (what, align, limit) = mapped(ck, scope, m)?;
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
                ck.error(&at, format!("{what} {v} is not a multiple of {align}: a mapping maps whole pages (device-dax: of the device's align)"));
            }
        }
        let end = offset.bytes().checked_add(length.bytes());
        let fits = match limit {
            Some(ns) => end.is_some_and(|end| end <= ns.size.bytes()),
            None => end.is_some(),
        };
        if length.bytes() == 0 || !fits {
            let whole = limit.map_or("the address space".to_string(), |ns| {
                format!("namespace `{}` ({})", ns.name, ns.size)
            });
            ck.error(
                &m.value.length.referenced,
                format!("{offset}+{length} does not fit in {whole}"),
            );
        }
        if ck.maps.insert(name.clone(), length.bytes()).is_some() {
            ck.error(
                &m.value.name.referenced,
                format!("mapping `{name}` already exists: unmap it first"),
            );
        }
        if matches!(what, Mapped::File(_)) {
            ck.file_maps.insert(name.clone());
        } else {
            ck.file_maps.remove(&name);
        }
        let spec = MapSpec {
            name: name.clone(),
            what,
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
        ck.file_maps.remove(&u.value);
        if ck.maps.remove(&u.value).is_none() {
            ck.error(&u.referenced, format!("no mapping `{}` to unmap", u.value));
        }
        Some((format!("unmap {}", u.value), u.value.clone()))
    }
}
