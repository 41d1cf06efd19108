//! A host program's shared-library closure, as `ldd` resolves it: what the
//! guest image copies for the distribution's tools (xtask) and what a case's
//! `put` brings along with a user's program (harness). One parser for both.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The libraries (and loader) `program` needs, at the absolute paths `ldd`
/// gives; empty for a static program or a file that is not ELF.
pub fn closure(program: &Path) -> Result<Vec<PathBuf>, String> {
    if !is_elf(program) {
        return Ok(Vec::new());
    }
    let out = Command::new("ldd")
        .arg(program)
        .output()
        .map_err(|e| format!("cannot run ldd: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // ldd says so, and exits 1, for a static program.
    if !out.status.success() || text.contains("not a dynamic executable") {
        return Ok(Vec::new());
    }
    parse(&text).map_err(|e| format!("ldd {}: {e}", program.display()))
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
pub fn parse(out: &str) -> Result<Vec<PathBuf>, String> {
    let mut libs = Vec::new();
    for line in out.lines().map(str::trim) {
        if line.is_empty()
            || line.starts_with("linux-vdso")
            || line.starts_with("statically linked")
        {
            continue;
        }
        if line.contains("=> not found") {
            return Err(format!("missing library: {line}"));
        }
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        match path {
            Some(p) if p.starts_with('/') => libs.push(PathBuf::from(p)),
            _ => return Err(format!("unexpected line: {line}")),
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
        assert!(parse("libx.so => not found\n")
            .unwrap_err()
            .contains("missing library"));
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
