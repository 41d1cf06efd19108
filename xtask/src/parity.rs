//! Kernel config parity with a distribution: the lab's kernel is
//! allnoconfig plus a fragment, and every option it leaves different from
//! Debian's own 6.12 config (package linux-config-6.12) in the areas that
//! decide what the lab tests (block, mm, DAX filesystems, libnvdimm,
//! device-dax, NFIT, x86 machine checks) must be either fixed in the
//! fragment or listed in images/kernel/parity.txt with the reason it cannot
//! change an outcome. Checked after `make olddefconfig`, before compiling.

use crate::kconfig;
use crate::util::{Error, Result};
use fs_err as fs;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// An audited area: Kconfig files whose symbols count, and which of them.
struct Area {
    name: &'static str,
    kconfigs: &'static [&'static str],
    take: fn(&str) -> bool,
}

const AREAS: &[Area] = &[
    Area {
        name: "block",
        kconfigs: &[
            "block/Kconfig",
            "block/Kconfig.iosched",
            "block/partitions/Kconfig",
        ],
        take: |_| true,
    },
    Area {
        name: "mm",
        kconfigs: &["mm/Kconfig", "mm/Kconfig.debug"],
        take: |_| true,
    },
    Area {
        name: "fs (DAX)",
        kconfigs: &["fs/Kconfig"],
        take: |s| s.contains("DAX"),
    },
    Area {
        name: "ext4",
        kconfigs: &["fs/ext4/Kconfig"],
        take: |_| true,
    },
    Area {
        name: "xfs",
        kconfigs: &["fs/xfs/Kconfig"],
        take: |_| true,
    },
    Area {
        name: "nvdimm",
        kconfigs: &["drivers/nvdimm/Kconfig"],
        take: |_| true,
    },
    Area {
        name: "dax",
        kconfigs: &["drivers/dax/Kconfig"],
        take: |_| true,
    },
    Area {
        name: "cxl",
        kconfigs: &["drivers/cxl/Kconfig"],
        take: |_| true,
    },
    Area {
        name: "nfit",
        kconfigs: &["drivers/acpi/nfit/Kconfig"],
        take: |_| true,
    },
    Area {
        name: "x86 machine checks, e820 pmem",
        kconfigs: &["arch/x86/Kconfig"],
        take: |s| s.contains("MCE") || s.starts_with("X86_PMEM_LEGACY"),
    },
];

/// The list's file, relative to the workspace.
pub const LIST: &str = "images/kernel/parity.txt";

/// `symbol -> area` for the audited symbols of a source tree.
fn audited(src: &Path) -> BTreeMap<String, &'static str> {
    let mut out = BTreeMap::new();
    for area in AREAS {
        for k in area.kconfigs {
            let Ok(text) = fs::read_to_string(src.join(k)) else {
                continue;
            };
            for sym in kconfig_symbols(&text) {
                if (area.take)(sym) {
                    out.insert(sym.to_string(), area.name);
                }
            }
        }
    }
    out
}

/// The symbols a Kconfig file defines (`config X`, `menuconfig X`).
fn kconfig_symbols(text: &str) -> Vec<&str> {
    crate::kconfig::symbols_in(text).collect()
}

fn values(config: &str) -> BTreeMap<String, String> {
    kconfig::parse(config)
        .unwrap_or_default()
        .into_iter()
        .map(|r| (r.symbol.trim_start_matches("CONFIG_").to_string(), r.value))
        .collect()
}

/// One difference: symbol, area, Debian's value, the lab's (`n` when unset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub symbol: String,
    pub area: &'static str,
    pub debian: String,
    pub lab: String,
}

fn differences(
    audited: &BTreeMap<String, &'static str>,
    debian: &str,
    lab: &str,
) -> Vec<Difference> {
    let (debian, lab) = (values(debian), values(lab));
    let get = |m: &BTreeMap<String, String>, s: &str| m.get(s).cloned().unwrap_or("n".into());
    audited
        .iter()
        .filter_map(|(sym, area)| {
            let (d, l) = (get(&debian, sym), get(&lab, sym));
            (d != l).then(|| Difference {
                symbol: sym.clone(),
                area,
                debian: d,
                lab: l,
            })
        })
        .collect()
}

/// The list: `SYMBOL [SYMBOL...]: why`, `#` comments. Returns `symbol ->
/// line number`; a line without a reason is an error.
fn parse_list(text: &str) -> Result<BTreeMap<String, usize>> {
    let mut out = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (syms, _why) = line
            .split_once(':')
            .filter(|(_, why)| !why.trim().is_empty())
            .ok_or_else(|| {
                Error::new(format!("line {}: write `SYMBOL [SYMBOL...]: why`", i + 1))
            })?;
        for s in syms.split_whitespace() {
            if out
                .insert(s.trim_start_matches("CONFIG_").to_string(), i + 1)
                .is_some()
            {
                return Err(Error::new(format!("line {}: {s} is listed twice", i + 1)));
            }
        }
    }
    Ok(out)
}

/// Every difference the list does not explain, and every entry that is no
/// longer a difference.
fn compare(diffs: &[Difference], listed: &BTreeMap<String, usize>) -> Vec<String> {
    let mut problems: Vec<String> = diffs
        .iter()
        .filter(|d| !listed.contains_key(&d.symbol))
        .map(|d| {
            format!(
                "CONFIG_{} ({}): Debian {}, the lab {}; fix it in the fragment or say in {LIST} why it cannot matter",
                d.symbol, d.area, d.debian, d.lab
            )
        })
        .collect();
    problems.extend(
        listed
            .iter()
            .filter(|(s, _)| !diffs.iter().any(|d| &d.symbol == *s))
            .map(|(s, line)| {
                format!("{LIST}:{line}: CONFIG_{s} no longer differs from Debian: drop it")
            }),
    );
    problems
}

/// Check the configured tree `src` (its `.config` text `lab`) against
/// Debian's config `debian_config`.
pub fn check(workspace: &Path, src: &Path, debian_config: &Path, lab: &str) -> Result<usize> {
    let debian = fs::read_to_string(debian_config)?;
    let list_path = workspace.join(LIST);
    let listed = parse_list(&fs::read_to_string(&list_path)?)
        .map_err(|e| Error::new(format!("{}: {e}", list_path.display())))?;
    let diffs = differences(&audited(src), &debian, lab);
    let problems = compare(&diffs, &listed);
    if problems.is_empty() {
        Ok(diffs.len())
    } else {
        Err(Error::new(format!(
            "the kernel config differs from Debian's ({}) where {LIST} does not explain it:\n  {}",
            debian_config.display(),
            problems.join("\n  ")
        )))
    }
}

/// Debian's amd64 config for the source package's kernel line
/// (`linux-source-6.12` -> `linux-config-6.12`), extracted into the cache
/// once (downloaded, never installed).
pub fn debian_config(cache: &Path, source_package: &str) -> Result<PathBuf> {
    let package = source_package.replace("linux-source-", "linux-config-");
    let dir = cache.join("debian-config").join(&package);
    let config = dir.join("config.amd64_none_amd64");
    if config.is_file() {
        return Ok(config);
    }
    let debs = dir.join("debs");
    let root = dir.join("root");
    fs::create_dir_all(&debs)?;
    crate::deps::extract_packages(&[package.as_str()], &debs, &root)?;
    let xz = root
        .join("usr/src")
        .join(&package)
        .join("config.amd64_none_amd64.xz");
    let text = std::process::Command::new("xz")
        .arg("-dc")
        .arg(&xz)
        .output()
        .map_err(|e| Error::new(format!("xz -dc {}: {e}", xz.display())))?;
    if !text.status.success() {
        return Err(Error::new(format!("xz -dc {} failed", xz.display())));
    }
    fs::write(&config, &text.stdout)?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kconfig_symbols_are_read() {
        let text = "menu \"x\"\nconfig BLK_WBT\n\tbool \"x\"\nmenuconfig PARTITION_ADVANCED\n  config  \nif X\nconfig A_B\nendif\n";
        assert_eq!(
            kconfig_symbols(text),
            ["BLK_WBT", "PARTITION_ADVANCED", "A_B"]
        );
    }

    fn audited_set() -> BTreeMap<String, &'static str> {
        [("BLK_WBT", "block"), ("SWAP", "mm"), ("KSM", "mm")]
            .into_iter()
            .map(|(s, a)| (s.to_string(), a))
            .collect()
    }

    #[test]
    fn differences_count_unset_as_n() {
        let debian = "CONFIG_BLK_WBT=y\nCONFIG_SWAP=y\n# CONFIG_KSM is not set\n";
        let lab = "CONFIG_SWAP=y\n";
        let d = differences(&audited_set(), debian, lab);
        assert_eq!(
            d,
            [Difference {
                symbol: "BLK_WBT".into(),
                area: "block",
                debian: "y".into(),
                lab: "n".into()
            }]
        );
    }

    #[test]
    fn the_list_must_explain_each_difference_and_nothing_else() {
        let diffs = differences(&audited_set(), "CONFIG_BLK_WBT=y\nCONFIG_KSM=y\n", "");
        let listed = parse_list("# why\nBLK_WBT SWAP: not request-based here\n").unwrap();
        let p = compare(&diffs, &listed);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].starts_with("CONFIG_KSM (mm): Debian y, the lab n"),
            "{}",
            p[0]
        );
        assert!(
            p[1].starts_with("images/kernel/parity.txt:2: CONFIG_SWAP no longer differs"),
            "{}",
            p[1]
        );
        assert!(parse_list("BLK_WBT\n")
            .unwrap_err()
            .to_string()
            .contains("line 1"));
        assert!(parse_list("A: x\nA: y\n")
            .unwrap_err()
            .to_string()
            .contains("listed twice"));
    }
}
