//! Why something the lab did through the guest failed, as a type: the
//! runner turns it into a failure, and tells a guest panic (a class of its
//! own for bisect) from an ndctl error without reading a message.

use super::compile::CompileError;
use crate::address::Unplaced;
use crate::unreadable::Unreadable;
use crate::vm::VmError;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The VM or the agent: a panic, QEMU gone, a timeout, a protocol
    /// error, a monitor command refused.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// A command the lab needs (not a case's) did not succeed.
    #[error("`{argv}` failed ({status}):\n{output}")]
    Command {
        argv: String,
        status: String,
        output: String,
    },
    /// A guest file could not be read or written (the agent's reason).
    #[error("cannot {action} {path} in the guest: {message}")]
    File {
        action: &'static str,
        path: String,
        message: String,
    },
    /// The guest's output is not in the form the lab reads.
    #[error(transparent)]
    Unreadable(#[from] Unreadable),
    /// A case location has no place in the guest's layout.
    #[error(transparent)]
    Unplaced(#[from] Unplaced),
    /// What the case or the lab counts on is not in the guest (a region,
    /// a namespace, a memdev, a mapping): what is missing, in the case's
    /// words.
    #[error("{0}")]
    Missing(String),
    /// Host-side work for the guest (a file a case brings).
    #[error("{}: {source}", path.display())]
    Host {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The poison model (gdb's stub, kernel symbols, its thread).
    #[error("the poison model: {0}")]
    Poison(#[from] crate::vm::poison::PoisonError),
    /// A case's C source did not compile.
    #[error(transparent)]
    Compile(#[from] CompileError),
    /// A program's libraries, for a `put`.
    #[error(transparent)]
    Ldd(#[from] pmem_lab_env::ldd::LddError),
    /// A placeholder the layout cannot fill.
    #[error(transparent)]
    Template(#[from] crate::template::Malformed),
    /// What the lab was doing when the inner error happened.
    #[error("{doing}: {source}")]
    Context {
        doing: String,
        source: Box<GuestError>,
    },
}

impl GuestError {
    /// This error, said to have happened while `doing`.
    pub fn context(self, doing: impl Into<String>) -> GuestError {
        GuestError::Context {
            doing: doing.into(),
            source: Box::new(self),
        }
    }

    /// The error under every context.
    pub fn root(&self) -> &GuestError {
        match self {
            GuestError::Context { source, .. } => source.root(),
            e => e,
        }
    }

    /// What kind of failure this is, without the details that change from
    /// run to run (contexts say where; the class says what).
    pub fn class(&self) -> String {
        match self.root() {
            GuestError::Vm(e) => e.class(),
            GuestError::Command { argv, .. } => format!(
                "`{}` failed",
                argv.split_whitespace()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            GuestError::File { action, .. } => format!("cannot {action} a guest file"),
            GuestError::Unreadable(u) => format!("unreadable {}", u.what),
            GuestError::Unplaced(_) => "a location outside the layout".into(),
            // The words up to the first colon: what is missing, not the
            // listing that shows it.
            GuestError::Missing(what) => what.split(':').next().unwrap_or_default().to_string(),
            GuestError::Host { .. } => "a host file".into(),
            GuestError::Poison(_) => "the poison model".into(),
            GuestError::Compile(_) => "a case's C source".into(),
            GuestError::Ldd(_) => "ldd".into(),
            GuestError::Template(_) => "a placeholder".into(),
            GuestError::Context { .. } => unreachable!("root() is under every context"),
        }
    }

    /// The guest kernel's panic text, when that is what this is at bottom.
    pub fn panic(&self) -> Option<&str> {
        match self.root() {
            GuestError::Vm(VmError::Panic { console }) => Some(console),
            _ => None,
        }
    }
}

/// `.context(...)` on a result, for the `?` chains of the guest layer.
pub trait Context<T> {
    fn context(self, doing: impl FnOnce() -> String) -> Result<T, GuestError>;
}

impl<T, E: Into<GuestError>> Context<T> for Result<T, E> {
    fn context(self, doing: impl FnOnce() -> String) -> Result<T, GuestError> {
        self.map_err(|e| e.into().context(doing()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_under_contexts_is_still_a_panic() {
        let e = GuestError::from(VmError::Panic {
            console: "Kernel panic - not syncing: Fatal machine check".into(),
        })
        .context("reading region0/badblocks")
        .context("setup");
        assert_eq!(
            e.panic(),
            Some("Kernel panic - not syncing: Fatal machine check")
        );
        assert!(e
            .to_string()
            .starts_with("setup: reading region0/badblocks: "));
        let e = GuestError::Missing("no region for NVDIMM 1".into()).context("setup");
        assert_eq!(e.panic(), None);
    }
}
