//! Placeholders that let a step name what setup created: `${ns.NAME.FIELD}`.
//!
//! The kernel decides device names (namespace0.0, dax0.0, pmem0) only when the
//! case runs, so steps refer to namespaces by the case's own name. Anything
//! that does not start with `${ns.` is left alone, so shell `${VAR}` in an
//! `sh:` step keeps working.

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
        Self::ALL.iter().find(|(n, _)| *n == s).map(|(_, f)| *f)
    }

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, f)| *f == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholder {
    /// Byte offset of `$` in the text.
    pub offset: usize,
    pub namespace: String,
    pub field: NsField,
}

const OPEN: &str = "${ns.";

/// Every `${ns.…}` in `text`, or a message for the first malformed one.
pub fn placeholders(text: &str) -> Result<Vec<Placeholder>, String> {
    let mut out = Vec::new();
    let mut rest = 0;
    while let Some(found) = text[rest..].find(OPEN) {
        let offset = rest + found;
        let body_start = offset + OPEN.len();
        let close = text[body_start..]
            .find('}')
            .ok_or_else(|| format!("`{}` is not closed with `}}`", &text[offset..]))?;
        let body = &text[body_start..body_start + close];
        let (namespace, field) = body
            .rsplit_once('.')
            .ok_or_else(|| format!("`${{ns.{body}}}` needs a field: write ${{ns.NAME.FIELD}}"))?;
        let field = NsField::parse(field).ok_or_else(|| {
            let known: Vec<_> = NsField::ALL.iter().map(|(n, _)| *n).collect();
            format!(
                "`${{ns.{body}}}`: unknown field `{field}` (known: {})",
                known.join(", ")
            )
        })?;
        out.push(Placeholder {
            offset,
            namespace: namespace.to_string(),
            field,
        });
        rest = body_start + close + 1;
    }
    Ok(out)
}

/// Replace every placeholder with what `lookup` says.
pub fn expand(
    text: &str,
    lookup: impl Fn(&str, NsField) -> Result<String, String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for p in placeholders(text)? {
        out.push_str(&text[copied..p.offset]);
        out.push_str(&lookup(&p.namespace, p.field)?);
        copied = text[p.offset..]
            .find('}')
            .map(|c| p.offset + c + 1)
            .unwrap_or(text.len());
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
            (ps[0].namespace.as_str(), ps[0].field),
            ("data", NsField::Chardev)
        );
        assert_eq!(
            (ps[1].namespace.as_str(), ps[1].field),
            ("a.b", NsField::Region)
        );
        let out = expand(text, |ns, f| Ok(format!("<{ns}:{}>", f.name()))).unwrap();
        assert_eq!(
            out,
            "daxctl list -d <data:chardev> && echo ${HOME} <a.b:region>"
        );
    }

    #[test]
    fn malformed_placeholders_are_explained() {
        assert!(placeholders("${ns.data")
            .unwrap_err()
            .contains("not closed"));
        assert!(placeholders("${ns.data}")
            .unwrap_err()
            .contains("needs a field"));
        let e = placeholders("${ns.data.uuid}").unwrap_err();
        assert!(
            e.contains("unknown field `uuid`") && e.contains("chardev"),
            "{e}"
        );
    }

    #[test]
    fn lookup_errors_propagate() {
        let e = expand("${ns.x.chardev}", |_, _| Err("x is fsdax".into())).unwrap_err();
        assert_eq!(e, "x is fsdax");
    }
}
