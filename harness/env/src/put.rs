//! `HOST:GUEST`, a host file for the guest as `lab shell --put` takes it.
//! xtask checks it while parsing its command line (so a typo fails before
//! any build) and forwards the text; the shell binary parses it again. One
//! parser serves both.

use std::fmt;
use std::path::{Path, PathBuf};

/// Why a `HOST:GUEST` argument is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutArgError {
    Form(String),
    /// The guest path breaks `put.to`'s rule (the rule's words).
    Guest(String),
    NotAFile(PathBuf),
    KernelInterface(PathBuf),
    TooBig {
        host: PathBuf,
        bytes: u64,
    },
}

impl fmt::Display for PutArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PutArgError::Form(arg) => write!(f, "`{arg}`: write HOST_PATH:/GUEST/PATH"),
            PutArgError::Guest(why) => f.write_str(why),
            PutArgError::NotAFile(p) => write!(f, "`{}` is not a file", p.display()),
            PutArgError::KernelInterface(p) => {
                write!(f, "`{}` is a kernel interface, not a file to copy", p.display())
            }
            PutArgError::TooBig { host, bytes } => write!(
                f,
                "`{}` has {bytes} bytes; a put file has at most {} MiB (it crosses the agent's channel)",
                host.display(),
                pmem_lab_proto::MAX_PUT_BYTES >> 20
            ),
        }
    }
}

impl std::error::Error for PutArgError {}

/// A host file and the absolute guest path it goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutArg {
    /// Absolute, so the forwarded text means the same from any directory.
    pub host: PathBuf,
    pub guest: String,
}

impl PutArg {
    /// `HOST:GUEST`: the host path names a regular file of at most
    /// [`pmem_lab_proto::MAX_PUT_BYTES`], the guest path follows the rule
    /// of a case's `put.to` ([`pmem_lab_proto::guest_path_problem`]).
    pub fn parse(arg: &str) -> Result<PutArg, PutArgError> {
        let (host, guest) = arg
            .rsplit_once(':')
            .filter(|(h, g)| !h.is_empty() && g.starts_with('/'))
            .ok_or_else(|| PutArgError::Form(arg.to_string()))?;
        if let Some(why) = pmem_lab_proto::guest_path_problem(guest) {
            return Err(PutArgError::Guest(why));
        }
        let host = Path::new(host);
        let meta = std::fs::metadata(host)
            .ok()
            .filter(|m| m.is_file())
            .ok_or_else(|| PutArgError::NotAFile(host.to_path_buf()))?;
        // /proc and /sys files say size 0 and are not files to copy.
        if host.starts_with("/proc") || host.starts_with("/sys") {
            return Err(PutArgError::KernelInterface(host.to_path_buf()));
        }
        if meta.len() > pmem_lab_proto::MAX_PUT_BYTES {
            return Err(PutArgError::TooBig {
                host: host.to_path_buf(),
                bytes: meta.len(),
            });
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

    fn small() -> PathBuf {
        let p = std::env::temp_dir().join(format!("pmem-lab-put-small-{}", std::process::id()));
        std::fs::write(&p, "x").unwrap();
        p
    }

    #[test]
    fn parse_reads_what_display_writes() {
        let file = small();
        let arg = PutArg::parse(&format!("{}:/root/x", file.display())).unwrap();
        assert_eq!(arg.guest, "/root/x");
        assert!(arg.host.is_absolute());
        assert_eq!(PutArg::parse(&arg.to_string()).unwrap(), arg);
    }

    #[test]
    fn parse_refuses_a_relative_guest_path_and_a_missing_file() {
        let file = small();
        let e = PutArg::parse(&format!("{}:root/x", file.display()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("HOST_PATH:/GUEST/PATH"), "{e}");
        let e = PutArg::parse("/no/such/file:/root/x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not a file"), "{e}");
        assert!(PutArg::parse(":/root/x").is_err());
        let e = PutArg::parse(&format!("{}:/proc/x", file.display()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not one under /proc"), "{e}");
        let e = PutArg::parse(&format!("{}:/tmp/../x", file.display()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a plain file path"), "{e}");
        let e = PutArg::parse("/proc/version:/tmp/v")
            .unwrap_err()
            .to_string();
        assert!(e.contains("kernel interface"), "{e}");
        let dir = std::env::temp_dir().join(format!("pmem-lab-put-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("big");
        let f = std::fs::File::create(&big).unwrap();
        // Sparse: the bound is read from the size, nothing is read.
        f.set_len(10 << 30).unwrap();
        let e = PutArg::parse(&format!("{}:/tmp/big", big.display()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most 4 MiB"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
