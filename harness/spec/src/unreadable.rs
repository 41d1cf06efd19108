//! Text the lab reads from the guest (a sysfs attribute, ndctl's JSON, a
//! trace buffer) that is not in the form the lab knows: a class of its own,
//! because it says the lab and the guest disagree about a format (a newer
//! kernel or ndctl, say), not that the case failed.

/// What was read, the text, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{what}: {why}: {text:?}")]
pub struct Unreadable {
    /// What the text is (`a badblocks line`, `a cxl_poison event`).
    pub what: String,
    pub why: String,
    pub text: String,
}

impl Unreadable {
    pub fn new(what: impl Into<String>, why: impl Into<String>, text: impl Into<String>) -> Self {
        Unreadable {
            what: what.into(),
            why: why.into(),
            text: text.into(),
        }
    }
}
