//! Namespace modes: the one vocabulary both the case model and the address
//! map need (its own module so neither imports the other).

use serde::Deserialize;

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NamespaceMode {
    Raw,
    Fsdax,
    Devdax,
}

impl NamespaceMode {
    /// The name `ndctl create-namespace --mode` takes.
    pub fn ndctl_name(self) -> &'static str {
        match self {
            NamespaceMode::Raw => "raw",
            NamespaceMode::Fsdax => "fsdax",
            NamespaceMode::Devdax => "devdax",
        }
    }
}
