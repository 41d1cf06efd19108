//! Placeholders that let a step name what setup created: `${ns.NAME.FIELD}`
//! for namespaces, `${cxl.N.FIELD}` for CXL devices.
//!
//! The kernel decides device names (namespace0.0, dax0.0, pmem0) only when the
//! case runs, so steps refer to namespaces by the case's own name (and to CXL
//! devices by their machine.cxl index). Anything that does not start with
//! `${ns.` or `${cxl.` is left alone, so shell `${VAR}` in an `sh:` step keeps
//! working.

/// What a placeholder can ask for about a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NsField {
    /// `namespace0.0`
    Dev,
    /// `region0`
    Region,
    /// `dax0.0` (devdax only)
    Chardev,
    /// `pmem0` (raw and fsdax only)
    Blockdev,
}

impl NsField {
    pub const ALL: [(&'static str, NsField); 4] = [
        ("dev", NsField::Dev),
        ("region", NsField::Region),
        ("chardev", NsField::Chardev),
        ("blockdev", NsField::Blockdev),
    ];

    fn parse(s: &str) -> Option<Self> {
        by_name(&Self::ALL, s)
    }

    pub fn name(self) -> &'static str {
        name_of(&Self::ALL, self)
    }
}

/// A field by its name in a field table.
fn by_name<T: Copy>(table: &[(&'static str, T)], s: &str) -> Option<T> {
    table.iter().find(|(n, _)| *n == s).map(|(_, f)| *f)
}

/// A field's name in its table.
fn name_of<T: PartialEq>(table: &[(&'static str, T)], field: T) -> &'static str {
    table
        .iter()
        .find(|(_, f)| *f == field)
        .map(|(n, _)| *n)
        .unwrap_or("?")
}

/// What a placeholder can ask for about a CXL device (`${cxl.N.FIELD}`,
/// N an index into machine.cxl).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CxlField {
    /// `mem0`: memdev names follow probe order, not the machine's order.
    Memdev,
    /// `region0`: the CXL region setup made over the device.
    Region,
}

impl CxlField {
    pub const ALL: [(&'static str, CxlField); 2] =
        [("memdev", CxlField::Memdev), ("region", CxlField::Region)];

    fn parse(s: &str) -> Option<Self> {
        by_name(&Self::ALL, s)
    }

    pub fn name(self) -> &'static str {
        name_of(&Self::ALL, self)
    }
}

/// What a placeholder names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ref {
    /// `${ns.NAME.FIELD}`
    Ns { name: String, field: NsField },
    /// `${cxl.N.FIELD}`
    Cxl { device: usize, field: CxlField },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholder {
    /// Byte offsets of `$` and just after `}` in the text.
    pub offset: usize,
    pub end: usize,
    pub target: Ref,
}

const OPEN: &str = "${";

/// Why a placeholder is malformed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Malformed {
    #[error("`{0}` is not closed with `}}`")]
    Unclosed(String),
    #[error("`${{{0}}}` needs a field: write ${{ns.NAME.FIELD}}")]
    NoField(String),
    #[error("`${{{0}}}`: write ${{cxl.N.FIELD}}, N a machine.cxl index")]
    CxlDevice(String),
    #[error("`${{{body}}}`: unknown field `{field}` (known: {})", known.join(", "))]
    UnknownField {
        body: String,
        field: String,
        known: Vec<&'static str>,
    },
}

/// Every `${ns.…}` and `${cxl.…}` in `text`, or the first malformed one.
/// Other `${…}` (shell variables) are left alone.
pub fn placeholders(text: &str) -> Result<Vec<Placeholder>, Malformed> {
    let mut out = Vec::new();
    let mut rest = 0;
    while let Some(found) = text[rest..].find(OPEN) {
        let offset = rest + found;
        let body_start = offset + OPEN.len();
        let after = &text[body_start..];
        if !(after.starts_with("ns.") || after.starts_with("cxl.")) {
            rest = body_start;
            continue;
        }
        let close = after
            .find('}')
            .ok_or_else(|| Malformed::Unclosed(text[offset..].to_string()))?;
        let body = &after[..close];
        let target = if let Some(ns) = body.strip_prefix("ns.") {
            let (name, field) = ns
                .rsplit_once('.')
                .ok_or_else(|| Malformed::NoField(body.to_string()))?;
            let field = NsField::parse(field)
                .ok_or_else(|| unknown(body, field, NsField::ALL.iter().map(|(n, _)| *n)))?;
            Ref::Ns {
                name: name.to_string(),
                field,
            }
        } else {
            let cxl = &body["cxl.".len()..];
            let (device, field) = cxl
                .split_once('.')
                .and_then(|(d, f)| Some((d.parse::<usize>().ok()?, f)))
                .ok_or_else(|| Malformed::CxlDevice(body.to_string()))?;
            let field = CxlField::parse(field)
                .ok_or_else(|| unknown(body, field, CxlField::ALL.iter().map(|(n, _)| *n)))?;
            Ref::Cxl { device, field }
        };
        let end = body_start + close + 1;
        out.push(Placeholder {
            offset,
            end,
            target,
        });
        rest = end;
    }
    Ok(out)
}

fn unknown(body: &str, field: &str, known: impl Iterator<Item = &'static str>) -> Malformed {
    Malformed::UnknownField {
        body: body.to_string(),
        field: field.to_string(),
        known: known.collect(),
    }
}

/// Replace every placeholder with what `lookup` says; its error type also
/// carries a malformed placeholder (the loader refused those, so at run
/// time it is the layout's answer that fails).
pub fn expand<E: From<Malformed>>(
    text: &str,
    lookup: impl Fn(&Ref) -> Result<String, E>,
) -> Result<String, E> {
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for p in placeholders(text)? {
        out.push_str(&text[copied..p.offset]);
        out.push_str(&lookup(&p.target)?);
        copied = p.end;
    }
    out.push_str(&text[copied..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_expands_namespace_fields() {
        let text = "daxctl list -d ${ns.data.chardev} && echo ${HOME} ${ns.a.b.region}";
        let ps = placeholders(text).unwrap();
        assert_eq!(ps.len(), 2);
        assert_eq!(
            ps[0].target,
            Ref::Ns {
                name: "data".into(),
                field: NsField::Chardev
            }
        );
        assert_eq!(
            ps[1].target,
            Ref::Ns {
                name: "a.b".into(),
                field: NsField::Region
            }
        );
        let out = expand(text, show).unwrap();
        assert_eq!(
            out,
            "daxctl list -d <data:chardev> && echo ${HOME} <a.b:region>"
        );
    }

    fn show(r: &Ref) -> Result<String, Malformed> {
        Ok(match r {
            Ref::Ns { name, field } => format!("<{name}:{}>", field.name()),
            Ref::Cxl { device, field } => format!("<cxl{device}:{}>", field.name()),
        })
    }

    #[test]
    fn finds_and_expands_cxl_device_fields() {
        let text = "echo 0x4000 > /sys/kernel/debug/cxl/${cxl.1.memdev}/inject_poison; cxl list -r ${cxl.0.region}";
        let out = expand(text, show).unwrap();
        assert_eq!(
            out,
            "echo 0x4000 > /sys/kernel/debug/cxl/<cxl1:memdev>/inject_poison; cxl list -r <cxl0:region>"
        );
        assert!(placeholders("${cxl.x.memdev}")
            .unwrap_err()
            .to_string()
            .contains("N a machine.cxl index"));
        let e = placeholders("${cxl.0.serial}").unwrap_err().to_string();
        assert!(
            e.contains("unknown field `serial`") && e.contains("memdev, region"),
            "{e}"
        );
    }

    #[test]
    fn malformed_placeholders_are_explained() {
        assert_eq!(
            placeholders("${ns.data").unwrap_err(),
            Malformed::Unclosed("${ns.data".into())
        );
        assert!(placeholders("${ns.data}")
            .unwrap_err()
            .to_string()
            .contains("needs a field"));
        let e = placeholders("${ns.data.uuid}").unwrap_err().to_string();
        assert!(
            e.contains("unknown field `uuid`") && e.contains("chardev"),
            "{e}"
        );
    }

    #[test]
    fn lookup_errors_propagate() {
        #[derive(Debug, PartialEq)]
        enum Lookup {
            Fsdax,
            Malformed,
        }
        impl From<Malformed> for Lookup {
            fn from(_: Malformed) -> Self {
                Lookup::Malformed
            }
        }
        let e = expand("${ns.x.chardev}", |_| Err(Lookup::Fsdax)).unwrap_err();
        assert_eq!(e, Lookup::Fsdax);
        assert_eq!(
            expand("${ns.x", |_| Err(Lookup::Fsdax)).unwrap_err(),
            Lookup::Malformed
        );
    }
}
