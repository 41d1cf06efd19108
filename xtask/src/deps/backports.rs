//! A newer QEMU from the backports suite of the machine's own Debian
//! release (Debian 12: bookworm-backports carries Debian 13's QEMU 10.0),
//! fetched into the lab's cache without touching the system.
//!
//! apt runs with a private configuration under `<cache>/qemu/apt-backports/`:
//! its own sources list (the system's Debian mirror and security archive,
//! read from the system's sources, plus `<codename>-backports`), its own
//! package lists and caches. The system's apt configuration, lists and
//! package set are never written. The packages an install would unpack are
//! downloaded and extracted like the private copy of Debian 12's QEMU
//! ([`super::private_qemu`]), into `<cache>/qemu/debian-<version>/root`.

use super::{apt, QEMU_PACKAGE};
use crate::util::{self, Error, Result};
use fs_err as fs;
use pmem_lab_env::qemu;
use std::path::{Path, PathBuf};
use std::process::Command;

const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// The Debian archive and security archive URIs in the system's sources
/// (one-line `deb URI SUITE ...` files and deb822 `.sources` stanzas), for
/// `codename`.
pub fn mirrors(texts: &[String], codename: &str) -> (Option<String>, Option<String>) {
    let (mut main, mut security) = (None, None);
    let mut note = |uri: &str, suite: &str| {
        if suite == codename && main.is_none() {
            main = Some(uri.trim_end_matches('/').to_string());
        }
        if suite == format!("{codename}-security") && security.is_none() {
            security = Some(uri.trim_end_matches('/').to_string());
        }
    };
    for text in texts {
        // One-line format.
        for line in text.lines().map(str::trim) {
            let mut w = line.split_whitespace();
            if w.next() != Some("deb") {
                continue;
            }
            let mut rest: Vec<&str> = w.collect();
            if rest.first().is_some_and(|o| o.starts_with('[')) {
                let close = rest.iter().position(|o| o.ends_with(']')).unwrap_or(0);
                rest.drain(..=close);
            }
            if let [uri, suite, ..] = rest[..] {
                note(uri, suite);
            }
        }
        // deb822 stanzas.
        for stanza in text.split("\n\n") {
            let field = |name: &str| {
                stanza.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    (k.trim().eq_ignore_ascii_case(name)).then(|| v.trim().to_string())
                })
            };
            let (Some(types), Some(uris), Some(suites)) =
                (field("Types"), field("URIs"), field("Suites"))
            else {
                continue;
            };
            if !types.split_whitespace().any(|t| t == "deb") {
                continue;
            }
            for uri in uris.split_whitespace() {
                for suite in suites.split_whitespace() {
                    note(uri, suite);
                }
            }
        }
    }
    (main, security)
}

/// The private sources list: the release, its updates and security
/// archive, and backports, all signed by Debian's archive keyring.
pub fn sources_list(main: &str, security: Option<&str>, codename: &str) -> String {
    let mut s = String::new();
    for suite in [
        codename.to_string(),
        format!("{codename}-updates"),
        format!("{codename}-backports"),
    ] {
        s.push_str(&format!("deb [signed-by={KEYRING}] {main} {suite} main\n"));
    }
    if let Some(sec) = security {
        s.push_str(&format!(
            "deb [signed-by={KEYRING}] {sec} {codename}-security main\n"
        ));
    }
    s
}

fn codename() -> Result<String> {
    let text = std::fs::read_to_string("/etc/os-release")
        .map_err(|e| Error::new(format!("/etc/os-release: {e}")))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Error::new("no VERSION_CODENAME in /etc/os-release: is this Debian?"))
}

fn system_sources() -> Vec<String> {
    let mut texts: Vec<String> = std::fs::read_to_string("/etc/apt/sources.list")
        .into_iter()
        .collect();
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        for e in dir.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "list" || x == "sources") {
                texts.extend(std::fs::read_to_string(&p));
            }
        }
    }
    texts
}

/// apt-get with the private configuration rooted at `dir`.
fn apt_get(dir: &Path) -> Command {
    let mut c = Command::new("apt-get");
    let o = |k: &str, v: &Path| format!("{k}={}", v.display());
    for opt in [
        o("Dir::Etc::SourceList", &dir.join("sources.list")),
        o("Dir::Etc::SourceParts", &dir.join("sources.list.d")),
        o("Dir::State::Lists", &dir.join("lists")),
        o("Dir::Cache", &dir.join("cache")),
    ] {
        c.args(["-o", &opt]);
    }
    c.env("DEBIAN_FRONTEND", "noninteractive");
    c
}

/// Fetch (or reuse) the backports QEMU; its binary.
pub fn fetch(cache: &Path) -> Result<PathBuf> {
    let codename = codename()?;
    let (main, security) = mirrors(&system_sources(), &codename);
    let main = main.ok_or_else(|| {
        Error::new(format!(
            "no Debian mirror for {codename} in /etc/apt/sources.list(.d): the lab takes backports from the mirror your system uses"
        ))
    })?;
    let parent = cache.join(qemu::CACHE_DIR);
    let dir = parent.join("apt-backports");
    for sub in ["sources.list.d", "lists/partial", "cache/archives/partial"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    fs::write(
        dir.join("sources.list"),
        sources_list(&main, security.as_deref(), &codename),
    )?;
    eprintln!(
        "[deps] reading {codename}-backports from {main} (apt configuration private to {})",
        dir.display()
    );
    let mut update = apt_get(&dir);
    update.arg("update");
    apt::output(update, "apt-get update (private lists) failed")?;
    let mut sim = apt_get(&dir);
    sim.args(["-s", "install", "--no-install-recommends", "-t"])
        .arg(format!("{codename}-backports"))
        .arg(QEMU_PACKAGE);
    let plan = apt::Plan::parse(&apt::output(sim, "planning the backports QEMU failed")?);
    let version = plan
        .installs
        .iter()
        .find(|i| i.package == QEMU_PACKAGE)
        .map(|i| i.version.clone())
        .ok_or_else(|| {
            Error::new(format!(
                "{codename}-backports has no {QEMU_PACKAGE} to fetch"
            ))
        })?;
    let dest = parent.join(format!("debian-{}", util::safe_name(&version)));
    let binary = dest.join("root/usr/bin").join(qemu::PROGRAM);
    if binary.is_file() {
        return Ok(binary);
    }
    util::sweep_staging(&parent, ".fetch-");
    let staging = parent.join(format!(".fetch-{}", std::process::id()));
    let debs = staging.join("debs");
    fs::create_dir_all(&debs)?;
    let pinned: Vec<String> = plan
        .installs
        .iter()
        .map(|i| format!("{}={}", i.package, i.version))
        .collect();
    eprintln!(
        "[deps] fetching {QEMU_PACKAGE} {version} and {} companion package(s) into {}",
        pinned.len() - 1,
        dest.display()
    );
    let mut download = apt_get(&dir);
    download.current_dir(&debs).arg("download").args(&pinned);
    apt::output(download, "apt-get download (backports QEMU) failed")?;
    let root = staging.join("root");
    let names = super::extract_debs(&debs, &root)?;
    super::private_qemu::publish(&staging, &names, &dest, "backports")?;
    Ok(binary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mirror_comes_from_either_format() {
        let deb822 = "Types: deb\n# snapshot\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n\
                      Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
                      Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\nComponents: main\n";
        let (m, s) = mirrors(&[deb822.to_string()], "bookworm");
        assert_eq!(m.as_deref(), Some("http://deb.debian.org/debian"));
        assert_eq!(s.as_deref(), Some("http://deb.debian.org/debian-security"));
        let one = "# comment\ndeb [arch=amd64 signed-by=/x.gpg] http://ftp.de.debian.org/debian/ bookworm main contrib\n\
                   deb-src http://ftp.de.debian.org/debian bookworm main\n";
        let (m, s) = mirrors(&[one.to_string()], "bookworm");
        assert_eq!(m.as_deref(), Some("http://ftp.de.debian.org/debian"));
        assert_eq!(s, None);
        assert_eq!(mirrors(&[one.to_string()], "trixie").0, None);
    }

    #[test]
    fn the_private_list_adds_backports_to_the_release() {
        let l = sources_list(
            "http://m/debian",
            Some("http://m/debian-security"),
            "bookworm",
        );
        assert!(l.contains(&format!(
            "deb [signed-by={KEYRING}] http://m/debian bookworm-backports main\n"
        )));
        assert!(l.contains("http://m/debian-security bookworm-security main"));
        assert_eq!(l.lines().count(), 4);
    }
}
