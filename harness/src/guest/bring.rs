//! The files a case brings into the guest (`put` steps), made ready on the
//! host: a C source compiled statically (in a sandbox: [`crate::guest::compile`]),
//! a dynamically linked program with its shared-library closure.

use crate::case::step::PutSpec;
use crate::case::{Action, Case};
use crate::guest::compile::Bounds;
use crate::guest::error::GuestError;
use crate::guest::Guest;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One file for the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFile {
    pub guest: String,
    pub host: PathBuf,
    pub executable: bool,
}

/// What a `put` step sends: the file, then what it needs to run.
pub fn prepare(spec: &PutSpec, cache: &Path) -> Result<Vec<GuestFile>, GuestError> {
    let host = if spec.compile {
        compile(spec, cache)?
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
) -> Result<Vec<(GuestFile, usize)>, GuestError> {
    let mut sent = Vec::new();
    for f in prepare(spec, cache)? {
        let contents = fs::read(&f.host).map_err(GuestError::host(&f.host))?;
        let bytes = contents.len();
        guest.put_file(&f.guest, contents, f.executable, timeout)?;
        sent.push((f, bytes));
    }
    Ok(sent)
}

/// Compile every C source the case's `put` steps bring: the validation
/// pass calls this so that a compile error shows before any VM boots.
/// Each error names the case file and the step's line, then why.
pub fn compile_case(case: &Case, cache: &Path) -> Result<(), Vec<String>> {
    let errors: Vec<String> = case
        .steps
        .iter()
        .filter_map(|step| match &step.action {
            Action::Put(spec) if spec.compile => compile(spec, cache)
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

fn compile(spec: &PutSpec, cache: &Path) -> Result<PathBuf, GuestError> {
    Ok(crate::guest::compile::compile(
        &spec.source,
        &spec.folder,
        cache,
        Bounds::DEFAULT,
    )?)
}

/// A dynamically linked program's libraries (and loader), as `ldd` on the
/// host resolves them, each to go to the same path in the guest.
fn libraries(program: &Path) -> Result<Vec<GuestFile>, GuestError> {
    pmem_lab_env::ldd::closure(program)?
        .into_iter()
        .map(|lib| {
            let host = fs::canonicalize(&lib).map_err(GuestError::host(&lib))?;
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
    fn a_dynamic_program_brings_its_libraries() {
        let exe = std::env::current_exe().unwrap();
        let libs = libraries(&exe).unwrap();
        assert!(libs.iter().any(|l| l.guest.contains("libc.so")), "{libs:?}");
    }
}
