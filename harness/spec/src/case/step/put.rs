//! `put`: a file the case brings (a reproducer, a script, a static program)
//! copied into the guest before later steps run it.

use super::{Check, Checker, Kind, Scope};
use serde::Deserialize;
use serde_saphyr::Spanned;
use std::path::{Component, Path, PathBuf};

/// The largest file a case may bring (the agent's rule: it crosses the JSON
/// channel); a program compiled from a case's source is bounded the same.
pub use pmem_lab_proto::MAX_PUT_BYTES;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutEntry {
    /// A file beside the case: relative to the case file's folder, inside it.
    pub from: Spanned<String>,
    /// Where it goes in the guest: an absolute path.
    pub to: Spanned<String>,
    /// Mode 0755 instead of 0644.
    #[serde(default)]
    pub executable: bool,
    /// Compile `from` (C) statically on the host and put the program.
    /// Default: true for a `.c` file.
    pub compile: Option<bool>,
}

/// A host file to copy into the guest.
#[derive(Debug, Clone, PartialEq)]
pub struct PutSpec {
    /// Resolved when the case was loaded; inside `folder`.
    pub source: PathBuf,
    /// The case file's folder, resolved: all a compile of `source` may read
    /// besides the system's headers and libraries.
    pub folder: PathBuf,
    pub to: String,
    pub executable: bool,
    /// `source` is C, to be compiled statically on the host first.
    pub compile: bool,
}

pub struct Put;

impl Kind for Put {
    type Entry = PutEntry;
    type Checked = PutSpec;
    const REFERENCE: &'static str = r#"
### `put`

```yaml
- put: {from: files/badblocks-report.sh, to: /tmp/report, executable: true}
- run: [/tmp/report, "${ns.fs.blockdev}"]
```

| field | default | meaning |
|---|---|---|
| `from` | required | a file beside the case, relative to the case file's folder; it must stay inside that folder (no `..`, no absolute path, no symlink out) and be a regular file of at most 4 MiB |
| `to` | required | the guest path, absolute and plain (no `.`, `..`, `//`, trailing `/`, NUL or `${...}`: it is not a template), at most 255 bytes a part and 4095 in all, not under /proc, /sys or /dev and not the lab's own /init or /sbin/pmem-lab-agent; folders are created |
| `executable` | false | mode 0755 instead of 0644 (a compiled program is executable) |
| `compile` | true for `*.c` | compile `from` on the host with `gcc -static -O2 -Wall` in a sandbox that sees only the case file's folder and the system's compiler, headers and libraries, and put the program (at most 4 MiB) |

Copies the user's own reproducer, script or program into the guest (written
to a temporary name and renamed, so nothing runs a half-written copy). A C
source is compiled statically on the host, in the validation pass before any
VM boots (a compile error fails the case's `validate/` trial with gcc's own
messages). A case file is code someone may hand to a CI job, so the compile
runs in a bubblewrap sandbox (`bwrap`, Debian's bubblewrap): the case file's
folder read-only at /case, the system's /usr/bin, /usr/lib, /usr/lib64,
/usr/libexec and /usr/include read-only (not /usr/local, /etc, /home, /root
or /tmp), a private /tmp and /dev, no network, no /proc; an `#include`, an
assembler `.incbin` or `.include` of any other host file finds nothing. It is
bounded: 60 s, 2 GiB of address space, 64 MiB per file written, gcc's
messages cut at 16 KiB, the program at 4 MiB; the message names the bound it
hit. The program is cached in the lab's cache (`--cache`) under a key of
everything the compile can read: every file in the case file's folder (names
and contents), gcc's version and identity, the flags, and the identity of
dpkg's status (the system's headers). A dynamically linked program brings its
shared-library closure (`ldd` on the host), each library at its host path.
The file is checked when the case is loaded and read when the step runs.
Files that are not `*.yaml` are not cases, so a case's files can live in a
folder beside it (`cases/guest/files/`).
"#;
}

impl Check for Put {
    fn check(
        ck: &mut Checker<'_>,
        _scope: &Scope<'_>,
        p: &Spanned<PutEntry>,
    ) -> Option<(String, PutSpec)> {
        let e = &p.value;
        let source = source(ck.case_dir(), &e.from.value);
        if let Err(why) = &source {
            ck.error(&e.from.referenced, why);
        }
        if let Some(why) = pmem_lab_proto::guest_path_problem(&e.to.value) {
            ck.error(&e.to.referenced, why);
        }
        let compile = e.compile.unwrap_or_else(|| e.from.value.ends_with(".c"));
        Some((
            format!("put {}", e.to.value),
            PutSpec {
                folder: source.as_ref().ok()?.1.clone(),
                source: source.ok()?.0,
                to: e.to.value.clone(),
                executable: e.executable || compile,
                compile,
            },
        ))
    }
}

/// Why a `put`'s `from` is refused.
#[derive(Debug, thiserror::Error)]
enum SourceError {
    #[error("`{0}`: `from` is a path relative to the case file's folder, without `..`")]
    NotRelative(String),
    #[error("the case's folder {}: {source}", dir.display())]
    Folder {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("`{from}`: {source} (looked for {})", path.display())]
    Missing {
        from: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{from}` leads out of the case's folder (to {})", real.display())]
    Escapes { from: String, real: PathBuf },
    #[error("`{0}` is not a regular file")]
    NotAFile(String),
    #[error("`{from}` has {bytes} bytes; a case brings at most {} MiB", MAX_PUT_BYTES >> 20)]
    TooBig { from: String, bytes: u64 },
}

/// `from` resolved in `dir` (the case file's folder), and the folder
/// resolved, or why not.
fn source(dir: &Path, from: &str) -> Result<(PathBuf, PathBuf), SourceError> {
    let rel = Path::new(from);
    if from.is_empty()
        || rel.is_absolute()
        || rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(SourceError::NotRelative(from.to_string()));
    }
    let real_dir = dir.canonicalize().map_err(|source| SourceError::Folder {
        dir: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join(rel);
    let missing = |source| SourceError::Missing {
        from: from.to_string(),
        path: path.clone(),
        source,
    };
    let real = path.canonicalize().map_err(missing)?;
    if !real.starts_with(&real_dir) {
        return Err(SourceError::Escapes {
            from: from.to_string(),
            real,
        });
    }
    let meta = std::fs::metadata(&real).map_err(missing)?;
    if !meta.is_file() {
        return Err(SourceError::NotAFile(from.to_string()));
    }
    if meta.len() > MAX_PUT_BYTES {
        return Err(SourceError::TooBig {
            from: from.to_string(),
            bytes: meta.len(),
        });
    }
    Ok((real, real_dir))
}
