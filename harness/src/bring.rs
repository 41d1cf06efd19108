//! The files a case brings into the guest (`put` steps), made ready on the
//! host: a C source compiled statically (cached by its content and the
//! compiler's identity), a dynamically linked program with its
//! shared-library closure.

use crate::case::step::PutSpec;
use crate::case::{Action, Case};
use crate::guest::Guest;
use sha2::{Digest, Sha256};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// One file for the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFile {
    pub guest: String,
    pub host: PathBuf,
    pub executable: bool,
}

/// What a `put` step sends: the file, then what it needs to run.
pub fn prepare(spec: &PutSpec, cache: &Path) -> Result<Vec<GuestFile>, String> {
    let host = if spec.compile {
        compile(&spec.source, cache)?
    } else {
        spec.source.clone()
    };
    let mut files = vec![GuestFile {
        guest: spec.to.clone(),
        host: host.clone(),
        // A compiled program is there to run.
        executable: spec.executable || spec.compile,
    }];
    files.extend(libraries(&host)?);
    Ok(files)
}

/// Prepare `spec`'s files and send each to the guest; each file with its
/// size, for the log.
pub fn put(
    guest: &mut Guest,
    spec: &PutSpec,
    cache: &Path,
    timeout: Duration,
) -> Result<Vec<(GuestFile, usize)>, String> {
    let mut sent = Vec::new();
    for f in prepare(spec, cache)? {
        let contents = fs::read(&f.host).map_err(|e| format!("{}: {e}", f.host.display()))?;
        let bytes = contents.len();
        guest.put_file(&f.guest, contents, f.executable, timeout)?;
        sent.push((f, bytes));
    }
    Ok(sent)
}

/// Compile every C source the case's `put` steps bring: the validation
/// pass calls this so that a compile error shows before any VM boots.
/// Each error names the case file and the step's line, then gcc's words.
pub fn compile_case(case: &Case, cache: &Path) -> Result<(), Vec<String>> {
    let errors: Vec<String> = case
        .steps
        .iter()
        .filter_map(|step| match &step.action {
            Action::Put(spec) if spec.compile => compile(&spec.source, cache)
                .err()
                .map(|e| format!("{}:{}: {e}", case.path.display(), step.line)),
            _ => None,
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Whether the host can compile C for the guest at all.
pub fn have_compiler() -> bool {
    pmem_lab_env::program("gcc").is_some()
}

/// `gcc -static -O2 -Wall` of `source`, cached under `<cache>/bring/`.
fn compile(source: &Path, cache: &Path) -> Result<PathBuf, String> {
    let code = fs::read(source).map_err(|e| format!("{}: {e}", source.display()))?;
    // gcc's identity is part of the key; asked once per process, not once
    // per source.
    static GCC: OnceLock<Result<Vec<u8>, String>> = OnceLock::new();
    let gcc = GCC
        .get_or_init(|| {
            Command::new("gcc")
                .arg("--version")
                .output()
                .map(|o| o.stdout)
                .map_err(|e| format!("cannot run gcc: {e} (install gcc)"))
        })
        .as_ref()
        .map_err(|e| format!("{}: {e}", source.display()))?;
    let mut h = Sha256::new();
    h.update(&code);
    h.update(gcc);
    h.update(FLAGS.join(" ").as_bytes());
    let key: String = h
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    let stem = source
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "program".into());
    let dir = cache.join("bring").join(&key);
    let out = dir.join(&stem);
    if out.is_file() {
        return Ok(out);
    }
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // Trials compile in parallel threads of one process: the temporary name
    // names both.
    let tmp = dir.join(format!(
        ".{stem}.{}.{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let result = Command::new("gcc")
        .args(FLAGS)
        .arg("-o")
        .arg(&tmp)
        .arg(source)
        .output()
        .map_err(|e| format!("cannot run gcc: {e}"))?;
    if !result.status.success() {
        let _ = fs::remove_file(&tmp);
        return Err(format!(
            "`{}` does not compile (gcc {}):\n{}",
            source.display(),
            FLAGS.join(" "),
            String::from_utf8_lossy(&result.stderr).trim_end()
        ));
    }
    fs::rename(&tmp, &out).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(out)
}

/// Static, so the guest needs nothing but the program; warnings shown.
const FLAGS: [&str; 3] = ["-static", "-O2", "-Wall"];

/// A dynamically linked program's libraries (and loader), as `ldd` on the
/// host resolves them, each to go to the same path in the guest.
fn libraries(program: &Path) -> Result<Vec<GuestFile>, String> {
    pmem_lab_env::ldd::closure(program)?
        .into_iter()
        .map(|lib| {
            let host = fs::canonicalize(&lib).map_err(|e| format!("{}: {e}", lib.display()))?;
            Ok(GuestFile {
                guest: lib.to_string_lossy().into_owned(),
                host,
                executable: true,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_c_source_compiles_once_and_a_broken_one_says_why() {
        if !have_compiler() {
            return; // no gcc on this machine: nothing to compile with
        }
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("hello.c");
        fs::write(
            &src,
            "#include <stdio.h>\nint main(void) { puts(\"hi\"); return 0; }\n",
        )
        .unwrap();
        let cache = dir.path().join("cache");
        let out = compile(&src, &cache).unwrap();
        assert!(out.is_file());
        // Static: nothing to bring along.
        assert!(libraries(&out).unwrap().is_empty());
        assert_eq!(compile(&src, &cache).unwrap(), out, "cached");
        let bad = dir.path().join("bad.c");
        fs::write(&bad, "int main(void) { return nope; }\n").unwrap();
        let e = compile(&bad, &cache).unwrap_err();
        assert!(e.contains("does not compile") && e.contains("nope"), "{e}");
    }

    #[test]
    fn a_dynamic_program_brings_its_libraries() {
        let exe = std::env::current_exe().unwrap();
        let libs = libraries(&exe).unwrap();
        assert!(libs.iter().any(|l| l.guest.contains("libc.so")), "{libs:?}");
    }
}
