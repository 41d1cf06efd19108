//! Kernel config fragments: what they ask for, and whether `.config` gave it.
//!
//! `make olddefconfig` silently drops an option whose dependencies are not
//! met (or that a tree renamed). A lab kernel without, say, MEMORY_FAILURE
//! boots fine and then fails every SIGBUS case in confusing ways, so every
//! request in the fragment is checked by name after configuration.

use std::collections::BTreeMap;

/// One requested setting: `CONFIG_X=y|m|"str"|123` or `# CONFIG_X is not set`
/// (stored as value `n`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub symbol: String,
    pub value: String,
    /// Fragment line, for messages.
    pub line: usize,
}

/// A line of a fragment that is no setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    pub line: usize,
    pub text: String,
}

impl std::fmt::Display for BadLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "line {}: `{}` is not `CONFIG_NAME=value`",
            self.line, self.text
        )
    }
}

/// Parse a fragment (or a .config, which has the same syntax).
pub fn parse(text: &str) -> Result<Vec<Request>, BadLine> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(rest) = line.strip_prefix("# CONFIG_") {
            if let Some(sym) = rest.strip_suffix(" is not set") {
                out.push(Request {
                    symbol: format!("CONFIG_{sym}"),
                    value: "n".into(),
                    line: i + 1,
                });
            }
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (sym, value) = line
            .split_once('=')
            .filter(|(s, _)| s.starts_with("CONFIG_") && !s.contains(' '))
            .ok_or_else(|| BadLine {
                line: i + 1,
                text: line.to_string(),
            })?;
        out.push(Request {
            symbol: sym.to_string(),
            value: value.to_string(),
            line: i + 1,
        });
    }
    Ok(out)
}

/// Each request that `.config` does not satisfy, as "CONFIG_X=want (got ...)".
pub fn unmet(requests: &[Request], dot_config: &str) -> Vec<String> {
    let have: BTreeMap<String, String> = parse(dot_config)
        .unwrap_or_default()
        .into_iter()
        .map(|r| (r.symbol, r.value))
        .collect();
    requests
        .iter()
        .filter_map(|r| {
            let got = have.get(&r.symbol).map(String::as_str).unwrap_or("n");
            (got != r.value).then(|| {
                let got = if have.contains_key(&r.symbol) {
                    format!("got {got}")
                } else {
                    "absent: a dependency is missing or the symbol does not exist in this tree"
                        .into()
                };
                format!("{}={} (fragment line {}; {got})", r.symbol, r.value, r.line)
            })
        })
        .collect()
}

/// Every symbol a source tree's Kconfig files define (`config X`,
/// `menuconfig X`): an option the fragment asks for and the tree does not
/// define is one this kernel lacks (older or newer than the fragment), not
/// one a dependency dropped.
pub fn defined_symbols(
    src: &std::path::Path,
) -> std::io::Result<std::collections::BTreeSet<String>> {
    let mut out = std::collections::BTreeSet::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() && !name.starts_with('.') {
                dirs.push(path);
            } else if kind.is_file() && name.starts_with("Kconfig") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                out.extend(symbols_in(&text).map(|s| format!("CONFIG_{s}")));
            }
        }
    }
    Ok(out)
}

/// The symbols one Kconfig file defines (`config X`, `menuconfig X`; help
/// text that starts a line with "config " is not a symbol).
pub fn symbols_in(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            l.strip_prefix("config ")
                .or_else(|| l.strip_prefix("menuconfig "))
                .map(str::trim)
        })
        .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
}

/// Split unmet requests into those whose symbol the tree does not define
/// (the kernel lacks the option) and the rest (dropped: an error).
pub fn split_unmet(
    requests: &[Request],
    dot_config: &str,
    defined: &std::collections::BTreeSet<String>,
) -> (Vec<String>, Vec<String>) {
    let lacking: Vec<Request> = requests
        .iter()
        .filter(|r| !defined.contains(&r.symbol))
        .cloned()
        .collect();
    let known: Vec<Request> = requests
        .iter()
        .filter(|r| defined.contains(&r.symbol))
        .cloned()
        .collect();
    // A `# CONFIG_X is not set` request for a symbol the tree lacks is met.
    let lacks = lacking
        .iter()
        .filter(|r| r.value != "n")
        .map(|r| r.symbol.clone())
        .collect();
    (lacks, unmet(&known, dot_config))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAGMENT: &str =
        "# comment\nCONFIG_ACPI=y\nCONFIG_LIBNVDIMM=m\n# CONFIG_VT is not set\nCONFIG_HZ=100\n";

    #[test]
    fn parses_settings_and_not_set_lines() {
        let r = parse(FRAGMENT).unwrap();
        let pairs: Vec<_> = r
            .iter()
            .map(|x| (x.symbol.as_str(), x.value.as_str(), x.line))
            .collect();
        assert_eq!(
            pairs,
            [
                ("CONFIG_ACPI", "y", 2),
                ("CONFIG_LIBNVDIMM", "m", 3),
                ("CONFIG_VT", "n", 4),
                ("CONFIG_HZ", "100", 5)
            ]
        );
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(parse("ACPI=y\n").unwrap_err().line, 1);
        assert!(parse("CONFIG_ACPI y\n").is_err());
    }

    #[test]
    fn everything_granted_means_nothing_unmet() {
        let cfg = "CONFIG_ACPI=y\nCONFIG_LIBNVDIMM=m\nCONFIG_HZ=100\n# CONFIG_VT is not set\n";
        assert!(unmet(&parse(FRAGMENT).unwrap(), cfg).is_empty());
        // An option that is simply absent counts as "not set".
        assert!(unmet(
            &parse(FRAGMENT).unwrap(),
            "CONFIG_ACPI=y\nCONFIG_LIBNVDIMM=m\nCONFIG_HZ=100\n"
        )
        .is_empty());
    }

    #[test]
    fn options_the_tree_does_not_define_are_lacking_not_dropped() {
        let defined: std::collections::BTreeSet<String> =
            symbols_in("config ACPI\n\tbool\nmenuconfig LIBNVDIMM\n  config VT\n")
                .map(|s| format!("CONFIG_{s}"))
                .collect();
        let cfg = "CONFIG_ACPI=y\n";
        let (lacks, dropped) = split_unmet(&parse(FRAGMENT).unwrap(), cfg, &defined);
        assert_eq!(lacks, ["CONFIG_HZ"]);
        assert_eq!(dropped.len(), 1, "{dropped:?}");
        assert!(dropped[0].starts_with("CONFIG_LIBNVDIMM=m"), "{dropped:?}");
    }

    #[test]
    fn names_each_dropped_or_changed_option() {
        let cfg = "CONFIG_ACPI=y\nCONFIG_LIBNVDIMM=y\nCONFIG_VT=y\n";
        let bad = unmet(&parse(FRAGMENT).unwrap(), cfg);
        assert_eq!(bad.len(), 3, "{bad:?}");
        assert!(bad[0].starts_with("CONFIG_LIBNVDIMM=m (fragment line 3; got y)"));
        assert!(bad[1].starts_with("CONFIG_VT=n (fragment line 4; got y)"));
        assert!(bad[2].starts_with("CONFIG_HZ=100 (fragment line 5; absent"));
    }
}
