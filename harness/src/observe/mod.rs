//! What the lab sees of the guest besides a step's own result: the
//! oracle (ndctl's view, checked after each step against the model) and
//! the checks of expectations against it.

pub mod checks;
pub mod oracle;
