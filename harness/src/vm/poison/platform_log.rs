//! The platform's log of its error list: what the lab's ACPI table
//! (images/acpi/root-dsm.asl, `LLOG`) writes to QEMU's isa-debugcon port,
//! one line per change, `+F,E` / `-F,E` / `~F,E` with hex units of 256 bytes
//! ([`pmem_lab_spec::machine::ERROR_UNIT`]), `[F, E)`. ACPICA's
//! `ToHexString` may or may not prefix `0x`; both are read.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// ARS error inject (function 7).
    Injected,
    /// Clear uncorrectable error (function 4): the media is clean.
    Cleared,
    /// ARS error inject clear (function 8): injected errors withdrawn.
    Withdrawn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub kind: ChangeKind,
    pub first: u64,
    pub end: u64,
}

fn hex(s: &str) -> Option<u64> {
    let s = s.trim();
    let s = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    u64::from_str_radix(s, 16).ok()
}

/// A line of the log that is not a change.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("the platform log line `{0}` is not `+F,E`, `-F,E` or `~F,E`")]
pub struct BadLine(pub String);

/// One line of the log.
pub fn parse_line(line: &str) -> Result<Change, BadLine> {
    let bad = || BadLine(line.to_string());
    let mut chars = line.chars();
    let kind = match chars.next() {
        Some('+') => ChangeKind::Injected,
        Some('-') => ChangeKind::Cleared,
        Some('~') => ChangeKind::Withdrawn,
        _ => return Err(bad()),
    };
    let (first, end) = chars.as_str().split_once(',').ok_or_else(bad)?;
    let (first, end) = (hex(first).ok_or_else(bad)?, hex(end).ok_or_else(bad)?);
    if end < first {
        return Err(bad());
    }
    Ok(Change { kind, first, end })
}

/// Follows the log file as QEMU appends to it.
#[derive(Debug)]
pub struct Tail {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl Tail {
    pub fn new(path: &Path) -> Tail {
        Tail {
            path: path.to_path_buf(),
            offset: 0,
            partial: String::new(),
        }
    }

    /// Whether the file grew since the last read (cheap: one stat).
    pub fn has_new(&self) -> bool {
        std::fs::metadata(&self.path).is_ok_and(|m| m.len() > self.offset)
    }

    /// The changes logged since the last call (a line still being written
    /// waits for its newline).
    pub fn read_new(&mut self) -> Result<Vec<Change>, super::PoisonError> {
        let log = |source| super::PoisonError::Log {
            path: self.path.clone(),
            source,
        };
        let mut f = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(log(e)),
        };
        f.seek(SeekFrom::Start(self.offset)).map_err(log)?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes).map_err(log)?;
        self.offset += bytes.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&bytes));
        let mut out = Vec::new();
        while let Some(nl) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=nl).collect();
            let line = line.trim();
            if !line.is_empty() {
                out.push(parse_line(line)?);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_with_and_without_0x() {
        assert_eq!(
            parse_line("+0x1000A0,0x1000A2").unwrap(),
            Change {
                kind: ChangeKind::Injected,
                first: 0x1000a0,
                end: 0x1000a2
            }
        );
        assert_eq!(
            parse_line("-001000A0,001000A4").unwrap().kind,
            ChangeKind::Cleared
        );
        assert_eq!(parse_line("~1,2").unwrap().kind, ChangeKind::Withdrawn);
        for bad in ["", "*1,2", "+1", "+x,2", "+5,4"] {
            assert!(parse_line(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_tail_waits_for_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("platform.log");
        let mut t = Tail::new(&p);
        assert!(t.read_new().unwrap().is_empty());
        std::fs::write(&p, "+10,11\n-1").unwrap();
        assert_eq!(t.read_new().unwrap().len(), 1);
        std::fs::write(&p, "+10,11\n-10,11\n").unwrap();
        let c = t.read_new().unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].kind, ChangeKind::Cleared);
    }
}
