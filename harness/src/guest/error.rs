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
    /// What the case or the lab counts on is not in the guest: its kind
    /// (the failure's class) and, in the case's words, which one and what
    /// the guest showed instead.
    #[error("{1}")]
    Missing(Absent, String),
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
    /// A host file's error, for `map_err` (as `BootError::host`).
    pub fn host(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> GuestError {
        let path = path.into();
        move |source| GuestError::Host { path, source }
    }

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
            GuestError::Missing(absent, _) => absent.class().into(),
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

/// The kinds of thing a case or the lab counts on in the guest: what a
/// [`GuestError::Missing`] is a class of, whatever its words say (a
/// bisection compares classes, so they must not depend on names or
/// listings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Absent {
    /// A namespace of the case, or one of its devices or fields.
    Namespace,
    /// A libnvdimm region where the machine should have one.
    Region,
    /// A namespace's device-dax device.
    DaxDevice,
    /// A mapping a step names, or one of the kind it needs.
    Mapping,
    /// A CXL memdev of the machine, or one of its fields.
    CxlDevice,
    /// A CXL root decoder that takes persistent memory.
    CxlDecoder,
    /// The badblock an injection should have recorded.
    Badblock,
    /// A file's extent at a byte.
    Extent,
    /// The lab's marker in a trace buffer.
    TraceMarker,
    /// A command where a step expects one.
    Command,
}

impl Absent {
    pub fn class(self) -> &'static str {
        match self {
            Absent::Namespace => "no such namespace",
            Absent::Region => "no such region",
            Absent::DaxDevice => "no dax device",
            Absent::Mapping => "no such mapping",
            Absent::CxlDevice => "no such CXL device",
            Absent::CxlDecoder => "no CXL root decoder for pmem",
            Absent::Badblock => "no badblock where injected",
            Absent::Extent => "no extent at the byte",
            Absent::TraceMarker => "no trace marker",
            Absent::Command => "no command",
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
    fn what_is_missing_is_classed_by_its_kind_not_its_words() {
        let one = GuestError::Missing(
            Absent::Region,
            "the machine has 2 NVDIMM(s) but the ACPI.NFIT bus shows 1 pmem region(s): region0"
                .into(),
        )
        .context("setup");
        let other = GuestError::Missing(Absent::Region, "ndbus0 has 0 pmem region(s)".into());
        assert_eq!(one.class(), "no such region");
        assert_eq!(one.class(), other.class());
        assert_ne!(
            GuestError::Missing(Absent::Namespace, "x".into()).class(),
            GuestError::Missing(Absent::Mapping, "x".into()).class()
        );
        assert!(one
            .to_string()
            .ends_with("bus shows 1 pmem region(s): region0"));
    }

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
        let e =
            GuestError::Missing(Absent::Region, "no region for NVDIMM 1".into()).context("setup");
        assert_eq!(e.panic(), None);
    }
}
