//! `run` and `sh`: a program in the guest, its result checked by `expect`.

use super::{Check, Checker, Kind, Scope};
use serde_saphyr::Spanned;
use std::collections::BTreeMap;

/// A command for the guest agent, placeholders still in (the runner expands
/// them with the names the kernel chose).
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub argv: Vec<String>,
    pub stdin: Option<String>,
    pub env: BTreeMap<String, String>,
}

pub struct Run;
pub struct Sh;

impl Kind for Run {
    type Entry = Vec<Spanned<String>>;
    type Checked = Command;
    const RUNS_COMMAND: bool = true;
    const REFERENCE: &'static str = r#"
### `run`

```yaml
- run: [ndctl, list, -R]
  expect: {json: [{dev: region0}]}
```

A program and its arguments, run by the guest agent without a shell, in its
own process group (killed at the step's `timeout`). `stdin` is written to it
(default: /dev/null); `env` adds variables. Its result is checked by
`expect` (exit status 0 by default). The program name must not be empty.
Placeholders (`${ns.NAME.FIELD}`, `${cxl.N.FIELD}`) work in every argument,
`stdin` and `env` values.
"#;
}

impl Check for Run {
    fn check(
        ck: &mut Checker<'_>,
        scope: &Scope<'_>,
        run: &Spanned<Self::Entry>,
    ) -> Option<(String, Command)> {
        match run.value.first() {
            None => ck.error(&run.referenced, "run needs at least a program name"),
            Some(p) if p.value.trim().is_empty() => {
                ck.error(&p.referenced, "the program name is empty")
            }
            Some(_) => {}
        }
        for arg in &run.value {
            ck.check_placeholders(&arg.value, &arg.referenced, scope);
        }
        let argv: Vec<String> = run.value.iter().map(|a| a.value.clone()).collect();
        Some((argv.join(" "), command(ck, scope, argv)))
    }
}

impl Kind for Sh {
    type Entry = String;
    type Checked = Command;
    const RUNS_COMMAND: bool = true;
    const REFERENCE: &'static str = r#"
### `sh`

```yaml
- sh: mount -o dax /dev/${ns.fs.blockdev} /mnt && echo ok > /mnt/f
```

A script run as `sh -c SCRIPT` (the guest's `sh`), otherwise like `run`.
An empty script is an error.
"#;
}

impl Check for Sh {
    fn check(
        ck: &mut Checker<'_>,
        scope: &Scope<'_>,
        sh: &Spanned<String>,
    ) -> Option<(String, Command)> {
        if sh.value.trim().is_empty() {
            ck.error(&sh.referenced, "the script is empty");
        }
        ck.check_placeholders(&sh.value, &sh.referenced, scope);
        let argv = vec!["sh".to_string(), "-c".to_string(), sh.value.clone()];
        Some((sh.value.clone(), command(ck, scope, argv)))
    }
}

/// The command with the step's `stdin` and `env`, their placeholders checked.
fn command(ck: &mut Checker<'_>, scope: &Scope<'_>, argv: Vec<String>) -> Command {
    let s = scope.step;
    if let Some(stdin) = &s.stdin {
        ck.check_placeholders(&stdin.value, &stdin.referenced, scope);
    }
    // Values may hold placeholders too (the runner expands them); names
    // are the program's environment names and stay literal.
    for value in s.env.values() {
        ck.check_placeholders(&value.value, &value.referenced, scope);
    }
    Command {
        argv,
        stdin: s.stdin.as_ref().map(|x| x.value.clone()),
        env: s
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.value.clone()))
            .collect(),
    }
}
