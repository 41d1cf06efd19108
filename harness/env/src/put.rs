//! `HOST:GUEST`, a host file for the guest as `lab shell --put` takes it.
//! xtask checks it while parsing its command line (so a typo fails before
//! any build) and forwards the text; the shell binary parses it again. One
//! parser serves both.

use std::fmt;
use std::path::{Path, PathBuf};

/// A host file and the absolute guest path it goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutArg {
    /// Absolute, so the forwarded text means the same from any directory.
    pub host: PathBuf,
    pub guest: String,
}

impl PutArg {
    /// `HOST:GUEST`: the host path names a file, the guest path is absolute.
    pub fn parse(arg: &str) -> Result<PutArg, String> {
        let (host, guest) = arg
            .rsplit_once(':')
            .filter(|(h, g)| !h.is_empty() && g.starts_with('/'))
            .ok_or_else(|| format!("`{arg}`: write HOST_PATH:/GUEST/PATH"))?;
        let host = Path::new(host);
        if !host.is_file() {
            return Err(format!("`{}` is not a file", host.display()));
        }
        Ok(PutArg {
            host: std::path::absolute(host).unwrap_or_else(|_| host.to_path_buf()),
            guest: guest.to_string(),
        })
    }
}

/// The form `parse` reads.
impl fmt::Display for PutArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host.display(), self.guest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_reads_what_display_writes() {
        let file = std::env::current_exe().unwrap();
        let arg = PutArg::parse(&format!("{}:/root/x", file.display())).unwrap();
        assert_eq!(arg.guest, "/root/x");
        assert!(arg.host.is_absolute());
        assert_eq!(PutArg::parse(&arg.to_string()).unwrap(), arg);
    }

    #[test]
    fn parse_refuses_a_relative_guest_path_and_a_missing_file() {
        let file = std::env::current_exe().unwrap();
        let e = PutArg::parse(&format!("{}:root/x", file.display())).unwrap_err();
        assert!(e.contains("HOST_PATH:/GUEST/PATH"), "{e}");
        let e = PutArg::parse("/no/such/file:/root/x").unwrap_err();
        assert!(e.contains("is not a file"), "{e}");
        assert!(PutArg::parse(":/root/x").is_err());
    }
}
