//! A host program's shared-library closure, as `ldd` resolves it: what the
//! guest image copies for the distribution's tools (xtask) and what a case's
//! `put` brings along with a user's program (harness). One parser for both.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Why a program's closure is not known.
#[derive(Debug)]
pub enum LddError {
    /// ldd could not be run.
    Run(std::io::Error),
    /// ldd found no library for a line (`libx.so => not found`).
    NotFound(String),
    /// A line of ldd's output the lab does not know.
    Unexpected(String),
    /// The program whose closure it was.
    Of {
        program: PathBuf,
        source: Box<LddError>,
    },
}

impl fmt::Display for LddError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LddError::Run(e) => write!(f, "cannot run ldd: {e}"),
            LddError::NotFound(line) => write!(f, "missing library: {line}"),
            LddError::Unexpected(line) => write!(f, "unexpected line: {line}"),
            LddError::Of { program, source } => write!(f, "ldd {}: {source}", program.display()),
        }
    }
}

impl std::error::Error for LddError {}

/// The libraries (and loader) `program` needs, at the absolute paths `ldd`
/// gives; empty for a static program or a file that is not ELF.
pub fn closure(program: &Path) -> Result<Vec<PathBuf>, LddError> {
    if !is_elf(program) {
        return Ok(Vec::new());
    }
    let out = Command::new("ldd")
        .arg(program)
        .output()
        .map_err(LddError::Run)?;
    let text = String::from_utf8_lossy(&out.stdout);
    // ldd says so, and exits 1, for a static program.
    if !out.status.success() || text.contains("not a dynamic executable") {
        return Ok(Vec::new());
    }
    parse(&text).map_err(|e| LddError::Of {
        program: program.to_path_buf(),
        source: Box::new(e),
    })
}

/// Whether `path` starts with the ELF magic (unreadable: no).
pub fn is_elf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

/// The absolute library paths in `ldd` output.
pub fn parse(out: &str) -> Result<Vec<PathBuf>, LddError> {
    let mut libs = Vec::new();
    for line in out.lines().map(str::trim) {
        if line.is_empty()
            || line.starts_with("linux-vdso")
            || line.starts_with("statically linked")
        {
            continue;
        }
        if line.contains("=> not found") {
            return Err(LddError::NotFound(line.to_string()));
        }
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        match path {
            Some(p) if p.starts_with('/') => libs.push(PathBuf::from(p)),
            _ => return Err(LddError::Unexpected(line.to_string())),
        }
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_yields_library_paths() {
        let out = "\tlinux-vdso.so.1 (0x00007ffc)\n\tlibndctl.so.6 => /lib/x86_64-linux-gnu/libndctl.so.6 (0x1)\n\t/lib64/ld-linux-x86-64.so.2 (0x2)\n";
        assert_eq!(
            parse(out).unwrap(),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libndctl.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
        assert!(matches!(
            parse("libx.so => not found\n").unwrap_err(),
            LddError::NotFound(_)
        ));
    }

    #[test]
    fn a_dynamic_program_has_a_closure_a_text_file_none() {
        let exe = std::env::current_exe().unwrap();
        assert!(closure(&exe)
            .unwrap()
            .iter()
            .any(|l| l.to_string_lossy().contains("libc.so")));
        let text = std::env::temp_dir().join(format!("ldd-test-{}", std::process::id()));
        std::fs::write(&text, "#!/bin/sh\n").unwrap();
        assert!(closure(&text).unwrap().is_empty());
        std::fs::remove_file(&text).unwrap();
    }
}
