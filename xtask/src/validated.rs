//! The validation pass and the selection count, remembered: when no input
//! of theirs changed since they last ran, their answer is what it was.
//!
//! Each is a run of the harness's `lab` runner that loads and checks every
//! case file (0.3-0.5 s of a debug build, twice in every `cargo xtask lab`:
//! a third of a warm one-case command). What decides them: every file
//! under the cases root (YAML and the sources cases bring), the
//! known-failures file, the runner binary itself, the compiler that checks
//! brought C sources and the installed packages whose headers it reads
//! (dpkg's status file), and the variables that move those files. Their
//! identities ([`crate::memo::identity`]) make the key; only a success is
//! remembered, and nothing is while an input changed in the last
//! [`crate::memo::SETTLE`] (a file's time ticks coarsely).

use crate::memo;
use crate::util::Key;
use pmem_lab_env::vars;
use std::path::{Path, PathBuf};

/// The inputs of a validation or selection, identified; None when one
/// cannot be read or has just changed (then nothing is remembered).
pub struct Inputs {
    key: String,
    dir: PathBuf,
}

impl Inputs {
    /// The current inputs for `workspace`'s cases and `runner` binary.
    pub fn now(workspace: &Path, runner: &Path, cache: &Path) -> Option<Inputs> {
        Inputs::settled(workspace, runner, cache, memo::SETTLE)
    }

    fn settled(
        workspace: &Path,
        runner: &Path,
        cache: &Path,
        settle: std::time::Duration,
    ) -> Option<Inputs> {
        let cases = vars::CASES
            .get()
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace.join("cases"));
        let known = vars::KNOWN_FAILURES
            .get()
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace.join("known-failures.yaml"));
        let mut files = vec![runner.to_path_buf()];
        walk(&cases, &mut files).ok()?;
        // Inputs that may be absent (a host without dpkg or gcc): their
        // absence is part of the key.
        let mut maybe = vec![known, PathBuf::from("/var/lib/dpkg/status")];
        maybe.extend(
            ["gcc", "bwrap"]
                .into_iter()
                .filter_map(pmem_lab_env::program),
        );
        let mut key = Key::new("validated-1");
        key.str("cases", &cases.display().to_string());
        for f in &files {
            if !memo::settled(f, settle) {
                return None;
            }
            key.str("file", &f.display().to_string())
                .str("id", &memo::identity(f)?);
        }
        for f in &maybe {
            let id = memo::identity(f);
            if id.is_some() && !memo::settled(f, settle) {
                return None;
            }
            key.str("maybe", &f.display().to_string())
                .str("id", id.as_deref().unwrap_or("absent"));
        }
        Some(Inputs {
            key: key.finish(),
            dir: cache.join("validated"),
        })
    }

    /// What was remembered for `what` (the runner's arguments) with these
    /// inputs.
    pub fn recall(&self, what: &[String]) -> Option<String> {
        std::fs::read_to_string(self.path(what)).ok()
    }

    /// Remember `answer` for `what`; a cache that cannot be written only
    /// costs the next run the pass.
    pub fn remember(&self, what: &[String], answer: &str) {
        let _ = crate::util::write_atomic(&self.path(what), answer);
    }

    fn path(&self, what: &[String]) -> PathBuf {
        let mut k = Key::new(&self.key);
        for w in what {
            k.str("arg", w);
        }
        self.dir.join(k.finish())
    }
}

/// Every file under `dir`, in name order (directories descended).
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_holds_until_a_case_file_changes() {
        let root = crate::util::test_dir("validated");
        let (ws, cache) = (root.join("ws"), root.join("cache"));
        std::fs::create_dir_all(ws.join("cases/sub")).unwrap();
        let case = ws.join("cases/sub/a.yaml");
        std::fs::write(&case, "steps: []\n").unwrap();
        let runner = ws.join("runner");
        std::fs::write(&runner, "binary").unwrap();
        std::fs::write(ws.join("known-failures.yaml"), "[]\n").unwrap();
        let settle = std::time::Duration::from_millis(50);
        let now = || Inputs::settled(&ws, &runner, &cache, settle);
        // Just written: nothing may be remembered yet.
        assert!(now().is_none());
        std::thread::sleep(settle * 2);
        let args = vec!["validate/".to_string()];
        let inputs = now().unwrap();
        assert_eq!(inputs.recall(&args), None);
        inputs.remember(&args, "ok");
        let again = now().unwrap();
        assert_eq!(again.recall(&args).as_deref(), Some("ok"));
        assert_eq!(again.recall(&["--list".to_string()]), None);
        // A new case file is a new input.
        std::fs::write(ws.join("cases/sub/b.yaml"), "steps: []\n").unwrap();
        std::thread::sleep(settle * 2);
        let changed = now().unwrap();
        assert_eq!(changed.recall(&args), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
