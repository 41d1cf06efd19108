//! Answers of slow host queries — a program's library closure (`ldd`), a
//! package's file list (`dpkg -L`), busybox's applets, a file's SHA-256 —
//! remembered across runs by the identity of the file that decides each.
//!
//! The identity is what the kernel changes whenever a file's content can
//! have changed: device, inode, size, mtime and ctime (nanoseconds). ctime
//! cannot be set from user space, and any write or rename moves it, so an
//! unchanged identity means unchanged content. A query whose answer also
//! depends on something else (the loader's cache for `ldd`) puts that in
//! its context, compared the same way. File times tick coarsely (a jiffy),
//! so a file changed within that tick of an answer could keep its identity:
//! as git does with "racily clean" entries, an answer about a file changed
//! less than [`SETTLE`] ago is not remembered.
//!
//! Why: the image step resolved every library closure and hashed every
//! file on every run (13 s of a warm one-case command); with the memo a
//! warm run stats the files and reads one small JSON file.

use crate::util::Result;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// `f` with the memo of `cache` (`<cache>/memo.json`), read once per
/// process and written back, if it learned something, when `f` returns.
/// The run's steps (the kernel's version, the image, QEMU's version) share
/// it, so the file is read once, not at each.
pub fn with<T>(cache: &Path, f: impl FnOnce(&mut Memo) -> Result<T>) -> Result<T> {
    static SHARED: std::sync::Mutex<Option<Memo>> = std::sync::Mutex::new(None);
    fs_err::create_dir_all(cache)?;
    let path = cache.join("memo.json");
    let mut shared = SHARED.lock().unwrap();
    let memo = match shared.take() {
        Some(m) if m.path == path => shared.insert(m),
        _ => shared.insert(Memo::load(&path)),
    };
    let out = f(memo);
    let saved = memo.save();
    let out = out?;
    saved?;
    Ok(out)
}

/// How old a file's last change must be for an answer about it to be kept.
pub const SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

/// What a file is now: "dev ino size mtime ctime", or None if it is not there.
pub fn identity(path: &Path) -> Option<String> {
    let m = std::fs::metadata(path).ok()?;
    Some(format!(
        "{} {} {} {}.{} {}.{}",
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    ))
}

/// The remembered answers, by query kind and file.
pub struct Memo {
    path: PathBuf,
    /// `kind\0file` -> (identity and context when answered, answer).
    entries: BTreeMap<String, (String, String)>,
    changed: bool,
    settle: std::time::Duration,
}

impl Memo {
    /// The memo kept at `path` (empty when there is none or it is unreadable:
    /// it only saves work, so a bad one is as good as none).
    pub fn load(path: &Path) -> Memo {
        let entries = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.as_object().cloned())
            .map(|o| {
                o.into_iter()
                    .filter_map(|(k, v)| {
                        let id = v.get(0)?.as_str()?.to_string();
                        let answer = v.get(1)?.as_str()?.to_string();
                        Some((k, (id, answer)))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Memo {
            path: path.to_path_buf(),
            entries,
            changed: false,
            settle: SETTLE,
        }
    }

    /// The answer to `kind` about `file`: remembered if `file`'s identity
    /// and `context` are what they were, else `answer()`'s, remembered.
    pub fn get(
        &mut self,
        kind: &str,
        file: &Path,
        context: &str,
        answer: impl FnOnce() -> Result<String>,
    ) -> Result<String> {
        let key = format!("{kind}\0{}", file.display());
        let Some(id) = identity(file) else {
            // Nothing to key by: ask, and let the query say what is wrong.
            return answer();
        };
        let id = format!("{id} {context}");
        if let Some((was, a)) = self.entries.get(&key) {
            if *was == id {
                return Ok(a.clone());
            }
        }
        let a = answer()?;
        if settled(file, self.settle) {
            self.entries.insert(key, (id, a.clone()));
            self.changed = true;
        }
        Ok(a)
    }

    /// Write the memo back if it learned something, dropping entries whose
    /// file is gone. Written to a temporary file and renamed: a concurrent
    /// run reads the old memo or the new one, never half of one.
    pub fn save(&mut self) -> Result<()> {
        if !self.changed {
            return Ok(());
        }
        self.entries.retain(|k, _| {
            k.split_once('\0')
                .is_some_and(|(_, f)| Path::new(f).exists())
        });
        let o: serde_json::Map<String, serde_json::Value> = self
            .entries
            .iter()
            .map(|(k, (id, a))| (k.clone(), serde_json::json!([id, a])))
            .collect();
        crate::util::write_atomic(&self.path, serde_json::Value::Object(o).to_string())
            .map_err(|e| crate::util::Error::new(format!("{}: {e}", self.path.display())))?;
        self.changed = false;
        Ok(())
    }
}

/// Whether `file` last changed (ctime) at least `settle` ago.
pub fn settled(file: &Path, settle: std::time::Duration) -> bool {
    let Ok(m) = std::fs::metadata(file) else {
        return false;
    };
    let changed = std::time::UNIX_EPOCH
        + std::time::Duration::new(m.ctime().max(0) as u64, m.ctime_nsec() as u32);
    changed.elapsed().is_ok_and(|age| age >= settle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn an_answer_is_reused_until_its_file_or_context_changes() {
        let dir = crate::util::test_dir("memo");
        let (file, store) = (dir.join("program"), dir.join("memo.json"));
        let settle = std::time::Duration::from_millis(50);
        let write = |text: &str| {
            std::fs::write(&file, text).unwrap();
            std::thread::sleep(settle * 2);
        };
        write("one");
        let asked = Cell::new(0);
        let ask = |m: &mut Memo, ctx: &str| {
            m.get("q", &file, ctx, || {
                asked.set(asked.get() + 1);
                Ok(std::fs::read_to_string(&file).unwrap())
            })
            .unwrap()
        };
        let mut m = Memo::load(&store);
        m.settle = settle;
        assert_eq!(ask(&mut m, "c"), "one");
        assert_eq!(ask(&mut m, "c"), "one");
        assert_eq!(asked.get(), 1);
        m.save().unwrap();
        // A new run reads what the last one learned.
        let mut m = Memo::load(&store);
        m.settle = settle;
        assert_eq!(ask(&mut m, "c"), "one");
        assert_eq!(asked.get(), 1);
        // Another context asks again; so does a rewritten file, even of
        // the same size.
        assert_eq!(ask(&mut m, "d"), "one");
        assert_eq!(asked.get(), 2);
        write("two");
        assert_eq!(ask(&mut m, "d"), "two");
        assert_eq!(asked.get(), 3);
        // A file changed just now is asked about every time.
        std::fs::write(&file, "new").unwrap();
        assert_eq!(ask(&mut m, "d"), "new");
        assert_eq!(ask(&mut m, "d"), "new");
        assert_eq!(asked.get(), 5);
        // A file that is gone is forgotten when the memo is saved.
        std::fs::remove_file(&file).unwrap();
        m.save().unwrap();
        assert_eq!(Memo::load(&store).entries.len(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
