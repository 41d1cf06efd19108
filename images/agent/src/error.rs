//! Why the agent could not serve a request. It crosses the channel as the
//! text of a `Reply::Error` (the protocol's one error form); inside the
//! agent it stays a type, so a system call's error keeps its errno until
//! that one place.

use std::fmt;

#[derive(Debug)]
pub enum AgentError {
    /// A system call failed: what the agent was doing, and the error.
    Io {
        doing: String,
        source: std::io::Error,
    },
    /// The request asks for what the agent will not do, or names what is
    /// not there (a mapping, a CPU): why, in the request's terms.
    Refused(String),
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentError::Io { doing, source } => write!(f, "{doing}: {source}"),
            AgentError::Refused(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for AgentError {}

/// A system call's error while `doing`, for `map_err`.
pub fn io(doing: impl Into<String>) -> impl FnOnce(std::io::Error) -> AgentError {
    let doing = doing.into();
    move |source| AgentError::Io { doing, source }
}

/// The last system call's error (errno) while `doing`.
pub fn last_os(doing: impl Into<String>) -> AgentError {
    io(doing)(std::io::Error::last_os_error())
}
