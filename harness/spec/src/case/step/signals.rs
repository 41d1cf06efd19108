//! `signals` and `mce_kill`: what memory_failure() tells the agent itself.

use super::{Check, Checker, Kind, Scope};
use crate::size::Timeout;
use serde::Deserialize;
use serde_saphyr::Spanned;
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalsEntry {
    /// How long to wait for a first signal (default 2s).
    pub wait: Option<Timeout>,
}

/// `mce_kill`'s policies (prctl PR_MCE_KILL): a closed vocabulary, so serde
/// refuses anything else where it is written.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MceKillPolicy {
    Early,
    Late,
    Default,
}

impl MceKillPolicy {
    pub fn name(self) -> &'static str {
        match self {
            MceKillPolicy::Early => "early",
            MceKillPolicy::Late => "late",
            MceKillPolicy::Default => "default",
        }
    }
}

pub struct Signals;
pub struct MceKill;

impl Kind for Signals {
    type Entry = SignalsEntry;
    /// How long to wait for a first signal.
    type Checked = Duration;
    const REPORTS_SIGNAL: bool = true;
    const REFERENCE: &'static str = r#"
### `signals`

```yaml
- signals: {wait: 2s}                    # SIGBUS the agent itself received
  expect: {signal: none}
```

The SIGBUS signals the agent process received since the last `signals`
(early-kill AO signals), waiting up to `wait` (default 2s) for a first one.
A `signals` step with more than one signal fails a single-signal
expectation.
"#;
}

impl Check for Signals {
    fn check(
        _ck: &mut Checker<'_>,
        _scope: &Scope<'_>,
        sig: &Spanned<SignalsEntry>,
    ) -> Option<(String, Duration)> {
        let wait = sig.value.wait.map_or(Duration::from_secs(2), |t| t.0);
        Some(("signals".to_string(), wait))
    }
}

impl Kind for MceKill {
    type Entry = MceKillPolicy;
    type Checked = MceKillPolicy;
    const REFERENCE: &'static str = r#"
### `mce_kill`

```yaml
- mce_kill: early                        # prctl(PR_MCE_KILL) for the agent
```

`early`, `late` or `default`: prctl(PR_MCE_KILL) on the agent's main
thread, the one memory_failure() signals.
"#;
}

impl Check for MceKill {
    fn check(
        _ck: &mut Checker<'_>,
        _scope: &Scope<'_>,
        policy: &Spanned<MceKillPolicy>,
    ) -> Option<(String, MceKillPolicy)> {
        Some((format!("mce_kill {}", policy.value.name()), policy.value))
    }
}
