//! What apt-get would do, read before it does it.
//!
//! `apt-get -s install` prints one line per action (`Inst`, `Conf`, `Remv`),
//! with the installed version in brackets and the new one in parentheses:
//!
//! ```text
//! Remv qemu-utils [1:10.0.2+ds-2+deb13u1~bpo12+1]
//! Inst libssl3 [3.0.19-1~deb12u2] (3.0.22-1~deb12u2 Debian-Security:12/oldstable-security [amd64])
//! Inst flex (2.6.4-8.2 Debian:12.15/oldstable [amd64])
//! ```
//!
//! The lab installs only when the plan removes nothing and downgrades
//! nothing: the machine is the user's.

use crate::util::{Error, Result};
use std::process::Command;

/// One package apt would unpack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Install {
    pub package: String,
    /// The version on the machine now, if any (an upgrade or a downgrade).
    pub installed: Option<String>,
    pub version: String,
}

/// A simulated `apt-get install`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub installs: Vec<Install>,
    /// `(package, installed version)` apt would remove.
    pub removals: Vec<(String, String)>,
}

impl Plan {
    /// Parse `apt-get -s install`'s output.
    pub fn parse(text: &str) -> Plan {
        let mut plan = Plan::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let (Some(verb), Some(package)) = (words.next(), words.next()) else {
                continue;
            };
            let rest: Vec<&str> = words.collect();
            let bracket = rest
                .first()
                .filter(|w| w.starts_with('['))
                .map(|w| w.trim_matches(['[', ']']).to_string());
            match verb {
                "Remv" => plan
                    .removals
                    .push((package.to_string(), bracket.unwrap_or_default())),
                "Inst" => {
                    let version = rest
                        .iter()
                        .find(|w| w.starts_with('('))
                        .map(|w| w.trim_start_matches('(').to_string())
                        .unwrap_or_default();
                    plan.installs.push(Install {
                        package: package.to_string(),
                        installed: bracket,
                        version,
                    });
                }
                _ => {}
            }
        }
        plan
    }

    /// What this plan would take from the user: removals, and installs
    /// whose new version is older than the installed one (`older` compares
    /// Debian versions: `older(a, b)` is a < b).
    pub fn harm(&self, older: impl Fn(&str, &str) -> bool) -> Vec<String> {
        let mut v: Vec<String> = self
            .removals
            .iter()
            .map(|(p, ver)| format!("remove {p} {ver}"))
            .collect();
        v.extend(self.installs.iter().filter_map(|i| {
            let old = i.installed.as_deref()?;
            older(&i.version, old)
                .then(|| format!("downgrade {} {old} to {}", i.package, i.version))
        }));
        v
    }
}

/// Simulate installing `packages` (nothing changes on the machine).
pub fn simulate(packages: &[&str]) -> Result<Plan> {
    let mut c = Command::new("apt-get");
    c.args(["-s", "install", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive");
    let what = format!("apt-get cannot plan installing {}", packages.join(" "));
    Ok(Plan::parse(&output(c, &what)?))
}

/// Run an apt command; its stdout, or an error with `what` and its stderr.
pub fn output(mut c: Command, what: &str) -> Result<String> {
    let out = c
        .output()
        .map_err(|e| Error::new(format!("cannot run apt-get: {e}")))?;
    if !out.status.success() {
        return Err(Error::new(format!(
            "{what}:\n{}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `a` is an older Debian version than `b` (dpkg decides).
pub fn older(a: &str, b: &str) -> bool {
    Command::new("dpkg")
        .args(["--compare-versions", a, "lt", b])
        .status()
        .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIM: &str = "\
NOTE: This is only a simulation!
The following packages will be REMOVED:
  qemu-utils
Remv qemu-utils [1:10.0.2+ds-2+deb13u1~bpo12+1]
Inst libssl3 [3.0.19-1~deb12u2] (3.0.22-1~deb12u2 Debian-Security:12/oldstable-security [amd64])
Inst flex (2.6.4-8.2 Debian:12.15/oldstable [amd64])
Inst qemu-system-common (1:7.2+dfsg-7+deb12u18+b3 Debian:12.15/oldstable [amd64])
Conf flex (2.6.4-8.2 Debian:12.15/oldstable [amd64])
";

    #[test]
    fn a_simulation_is_read_action_by_action() {
        let p = Plan::parse(SIM);
        assert_eq!(
            p.removals,
            [(
                "qemu-utils".to_string(),
                "1:10.0.2+ds-2+deb13u1~bpo12+1".to_string()
            )]
        );
        assert_eq!(p.installs.len(), 3);
        assert_eq!(p.installs[0].installed.as_deref(), Some("3.0.19-1~deb12u2"));
        assert_eq!(p.installs[0].version, "3.0.22-1~deb12u2");
        assert_eq!(p.installs[1].installed, None);
        assert_eq!(p.installs[2].version, "1:7.2+dfsg-7+deb12u18+b3");
    }

    #[test]
    fn removals_and_downgrades_are_harm_upgrades_are_not() {
        let p = Plan::parse(SIM);
        // A stand-in order: plain string comparison is enough for these.
        let harm = p.harm(|a, b| a < b);
        assert_eq!(harm, ["remove qemu-utils 1:10.0.2+ds-2+deb13u1~bpo12+1"]);
        let down = Plan::parse("Inst qemu-utils [1:10.0] (1:7.2 Debian:12 [amd64])\n");
        // dpkg decides the real order; this stand-in knows one pair.
        let older = |a: &str, b: &str| (a, b) == ("1:7.2", "1:10.0");
        assert_eq!(down.harm(older), ["downgrade qemu-utils 1:10.0 to 1:7.2"]);
        assert!(Plan::parse("Inst flex (2.6.4-8.2 Debian:12.15 [amd64])\n")
            .harm(|a, b| a < b)
            .is_empty());
    }
}
