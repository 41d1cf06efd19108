//! The workspace's programs the lab runs — the harness's `lab` test runner,
//! the case shell and the guest agent — built by one cargo invocation per
//! xtask process, then run directly.
//!
//! Why not `cargo test ... --test lab` for each pass: every cargo start
//! checks the whole workspace's freshness (0.15-0.2 s here), and a lab run
//! used to start cargo five times (the validation pass, `--list`, the
//! agent's release build, the run, and the xtask itself). One `cargo build`
//! of the three targets costs one check, and the passes start the runner in
//! milliseconds. The agent is built in the dev profile with a release-like
//! override (the workspace's Cargo.toml), so one profile serves all three.

use crate::util::{Error, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The built programs' paths.
#[derive(Debug, Clone, PartialEq)]
pub struct Binaries {
    /// The harness's `lab` integration test (libtest-mimic runner).
    pub lab: PathBuf,
    /// `pmem-lab-shell`, for `cargo xtask lab shell`.
    pub shell: PathBuf,
    /// The guest agent, copied into the initramfs.
    pub agent: PathBuf,
}

static BUILT: OnceLock<Result<Binaries>> = OnceLock::new();

/// Build (once per process) and return the programs.
pub fn get(workspace: &Path) -> Result<&'static Binaries> {
    BUILT
        .get_or_init(|| build(workspace))
        .as_ref()
        .map_err(Error::clone)
}

fn build(workspace: &Path) -> Result<Binaries> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // Diagnostics rendered to stderr as a plain build would print them;
    // stdout carries the JSON messages that name the artifacts.
    let out = Command::new(cargo)
        .current_dir(workspace)
        .args([
            "build",
            "--quiet",
            "--message-format=json-render-diagnostics",
            "--package",
            "pmem-lab-harness",
            "--test",
            "lab",
            "--bin",
            "pmem-lab-shell",
            "--package",
            "pmem-lab-agent",
            "--bin",
            "pmem-lab-agent",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| Error::new(format!("cannot run cargo: {e}")))?;
    if !out.status.success() {
        return Err(Error::new(format!(
            "cargo could not build the lab's programs ({}; its errors are above)",
            out.status
        )));
    }
    parse(&String::from_utf8_lossy(&out.stdout))
}

/// The three executables in cargo's `compiler-artifact` messages.
fn parse(messages: &str) -> Result<Binaries> {
    let (mut lab, mut shell, mut agent) = (None, None, None);
    for line in messages.lines() {
        let Ok(m) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if m["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(exe) = m["executable"].as_str().map(PathBuf::from) else {
            continue;
        };
        let kind = &m["target"]["kind"][0];
        match (m["target"]["name"].as_str(), kind.as_str()) {
            (Some("lab"), Some("test")) => lab = Some(exe),
            (Some("pmem-lab-shell"), Some("bin")) => shell = Some(exe),
            (Some("pmem-lab-agent"), Some("bin")) => agent = Some(exe),
            _ => {}
        }
    }
    let missing =
        |what: &str| Error::new(format!("cargo built no {what} (its messages name none)"));
    Ok(Binaries {
        lab: lab.ok_or_else(|| missing("`lab` test runner"))?,
        shell: shell.ok_or_else(|| missing("pmem-lab-shell"))?,
        agent: agent.ok_or_else(|| missing("pmem-lab-agent"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_artifacts_are_found_in_cargo_messages() {
        let messages = r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"serde"},"executable":null}
{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"pmem-lab-agent"},"executable":"/t/debug/pmem-lab-agent"}
{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"pmem-lab-shell"},"executable":"/t/debug/pmem-lab-shell"}
{"reason":"compiler-artifact","target":{"kind":["test"],"name":"lab"},"executable":"/t/debug/deps/lab-1234"}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            parse(messages).unwrap(),
            Binaries {
                lab: "/t/debug/deps/lab-1234".into(),
                shell: "/t/debug/pmem-lab-shell".into(),
                agent: "/t/debug/pmem-lab-agent".into(),
            }
        );
        let err = parse(r#"{"reason":"build-finished","success":true}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`lab` test runner"), "{err}");
    }
}
