//! `cargo xtask bisect CASE --kernel-tree DIR --good REV --bad REV`: git
//! bisect driven by the lab.
//!
//! The user's tree is never written: the lab clones it (`git clone --shared`,
//! objects borrowed, nothing copied) into `<cache>/bisect/<key>/linux` and
//! bisects there, building each commit out of tree in one build folder, so
//! each step is an incremental build. A commit is judged by the case's
//! outcome compared with its failure at BAD, not by an exit code: the same
//! failure class (the failing step and the kind of mismatch, see the
//! harness's `Failure::class`) is bad, a pass is good, anything else (no
//! build, no boot, a different failure) is skipped, never blamed. With
//! `--repeat N` each commit runs up to N times (BAD too, which measures how
//! often the failure shows), and a good verdict comes with the chance that a
//! bad commit would have passed that many times.

use crate::kernel::KernelSpec;
use crate::lab;
use crate::util::{Error, Key, Result};
use crate::Options;
use pmem_lab_env::events::Status;
use pmem_lab_env::vars;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use xshell::{cmd, Shell};

pub struct BisectOptions {
    /// A case id as `cargo xtask lab -- --list` shows it.
    pub case: String,
    pub tree: PathBuf,
    pub good: String,
    pub bad: String,
    /// Runs per commit, at most.
    pub repeat: u32,
}

/// One run of the case on one commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Run {
    Passed,
    /// Failed, with its class and the first line of its message.
    Failed {
        class: String,
        first: String,
    },
    /// Skipped or not reported (a case the kernel cannot take).
    Other(String),
}

/// What a commit is, for git bisect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Good,
    Bad,
    Skip(String),
}

impl Verdict {
    fn git_word(&self) -> &'static str {
        match self {
            Verdict::Good => "good",
            Verdict::Bad => "bad",
            Verdict::Skip(_) => "skip",
        }
    }
}

/// Judge a commit by its runs against BAD's failure class: any run with
/// BAD's class makes it bad; all runs passing makes it good; anything else
/// (another failure, a case that did not run) skips it.
pub fn judge(runs: &[Run], bad_class: &str) -> Verdict {
    if runs
        .iter()
        .any(|r| matches!(r, Run::Failed { class, .. } if class == bad_class))
    {
        return Verdict::Bad;
    }
    if !runs.is_empty() && runs.iter().all(|r| *r == Run::Passed) {
        return Verdict::Good;
    }
    let why = runs
        .iter()
        .find_map(|r| match r {
            Run::Failed { first, .. } => Some(format!("fails differently: {first}")),
            Run::Other(m) => Some(m.clone()),
            Run::Passed => None,
        })
        .unwrap_or_else(|| "no run".to_string());
    Verdict::Skip(why)
}

/// The chance that a bad commit passes `runs` times when the failure shows
/// in a fraction `rate` of runs at BAD.
pub fn miss_chance(rate: f64, runs: u32) -> f64 {
    (1.0 - rate).powi(runs as i32)
}

/// What `git bisect good|bad|skip` said.
#[derive(Debug, PartialEq, Eq)]
pub enum GitSaid {
    /// It checked out the next commit to test.
    Next,
    /// `<sha> is the first bad commit`.
    Found(String),
    /// Only skipped commits are left: the first bad one is among these.
    OnlySkipped(Vec<String>),
}

pub fn parse_git(out: &str) -> GitSaid {
    if let Some(line) = out
        .lines()
        .find(|l| l.ends_with(" is the first bad commit"))
    {
        return GitSaid::Found(
            line.split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string(),
        );
    }
    if out.contains("There are only 'skip'ped commits left to test") {
        let shas = out
            .lines()
            .filter(|l| l.len() >= 40 && l[..40].chars().all(|c| c.is_ascii_hexdigit()))
            .map(|l| l[..40].to_string())
            .collect();
        return GitSaid::OnlySkipped(shas);
    }
    GitSaid::Next
}

/// A commit tested: its runs, verdict, and where its evidence is.
struct Tested {
    sha: String,
    verdict: Verdict,
    runs: Vec<Run>,
    /// Artifacts of its last run (steps.log, reproduce.sh).
    artifacts: PathBuf,
}

/// What a bisection found.
pub struct Bisected {
    /// The first bad commit, when there is one.
    pub first: Option<String>,
    /// Commits skipped, and why.
    pub skipped: Vec<(String, String)>,
    /// Commits tested, BAD and GOOD included.
    pub tested: usize,
}

/// Bisect (see the module's text).
/// GOOD and BAD resolved to commits of `tree`, different, GOOD an ancestor
/// of BAD; each refusal names the option and says what to do.
fn revisions(sh: &Shell, tree: &Path, good: &str, bad: &str) -> Result<(String, String)> {
    let rev = |opt: &str, r: &str| -> Result<String> {
        let spec = format!("{r}^{{commit}}");
        cmd!(sh, "git -C {tree} rev-parse --verify --quiet {spec}")
            .quiet()
            .ignore_stderr()
            .read()
            .map(|s| s.trim().to_string())
            .ok()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                Error::new(format!(
                    "{opt} {r}: not a commit of {} (`git -C {} log --oneline` lists them)",
                    tree.display(),
                    tree.display()
                ))
            })
    };
    let (g, b) = (rev("--good", good)?, rev("--bad", bad)?);
    if g == b {
        return Err(Error::new(format!(
            "--good {good} and --bad {bad} are the same commit ({}): nothing lies between them",
            short(&g)
        )));
    }
    let ancestor = |a: &str, d: &str| {
        cmd!(sh, "git -C {tree} merge-base --is-ancestor {a} {d}")
            .quiet()
            .ignore_stderr()
            .run()
            .is_ok()
    };
    if !ancestor(&g, &b) {
        return Err(Error::new(if ancestor(&b, &g) {
            format!("--good {good} comes after --bad {bad}: swap them (GOOD is the older commit, where the case passes)")
        } else {
            format!("--good {good} is not in --bad {bad}'s history: bisect needs GOOD to be an ancestor of BAD (`git merge-base {good} {bad}` is one)")
        }));
    }
    Ok((g, b))
}

pub fn run(opts: &Options, b: &BisectOptions) -> Result<Bisected> {
    let sh = Shell::new()?;
    let tree = std::fs::canonicalize(&b.tree)?;
    // Everything the arguments name is checked before a clone or a build.
    let (good, bad) = revisions(&sh, &tree, &b.good, &b.bad)?;
    crate::lab::checked_args(opts, Some(&b.case), &["--exact".to_string()])
        .map_err(|e| Error::new(format!("bisect: the case `{}`: {e}", b.case)))?;
    // One clone (and so one build folder, incremental from bisection to
    // bisection) per tree; a folder of runs and a report per bisection.
    let (home, lock) = tree_home(opts, &tree)?;
    let dir = home.join(
        Key::new("bisect")
            .str("case", &b.case)
            .str("good", &good)
            .str("bad", &bad)
            .str("repeat", &b.repeat.to_string())
            .finish(),
    );
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let clone = clone_seeing(&sh, &tree, &home, &[&good, &bad])?;
    let _ = cmd!(sh, "git -C {clone} bisect reset")
        .quiet()
        .ignore_status()
        .output();
    eprintln!(
        "[bisect] {} from good {} to bad {} in {}",
        b.case,
        short(&good),
        short(&bad),
        dir.display()
    );
    let tester = |sha: &str, class: Option<&str>| test(opts, b, &sh, &clone, &dir, sha, class);

    // BAD: the failure to look for, and how often it shows.
    let at_bad = tester(&bad, None)?;
    let (bad_class, rate) = failure_at_bad(&b.case, &bad, &at_bad)?;
    let at_good = tester(&good, Some(&bad_class))?;
    if at_good.verdict != Verdict::Good {
        return Err(Error::new(format!(
            "{} is not good at GOOD {}: {} ({})",
            b.case,
            short(&good),
            at_good.verdict.git_word(),
            show_runs(&at_good.runs)
        )));
    }
    let mut log = vec![at_bad, at_good];
    let out = cmd!(sh, "git -C {clone} bisect start {bad} {good}")
        .quiet()
        .read()?;
    let mut said = parse_git(&out);
    while said == GitSaid::Next {
        let head = cmd!(sh, "git -C {clone} rev-parse HEAD")
            .quiet()
            .read()?
            .trim()
            .to_string();
        let t = tester(&head, Some(&bad_class))?;
        let word = t.verdict.git_word();
        // `git bisect skip` ends with status 2 when only skipped commits
        // are left: its words say what happened, not its status.
        let out = cmd!(sh, "git -C {clone} bisect {word}")
            .quiet()
            .ignore_status()
            .read()?;
        said = parse_git(&out);
        log.push(t);
    }
    let _ = cmd!(sh, "git -C {clone} bisect reset")
        .quiet()
        .ignore_status()
        .output();
    let report = report(&sh, &clone, &said, &log, rate, b.repeat)?;
    let path = dir.join("bisect.md");
    std::fs::write(&path, &report)?;
    eprintln!("{report}\n[bisect] this report: {}", path.display());
    drop(lock);
    Ok(Bisected::of(said, &log))
}

/// The cache folder of bisections of `tree`, locked against a second
/// bisection of the same tree (the lock holds while the file is open).
fn tree_home(opts: &Options, tree: &Path) -> Result<(PathBuf, std::fs::File)> {
    let home = opts.cache.join("bisect").join(
        Key::new("bisect-tree")
            .str("tree", &tree.display().to_string())
            .finish(),
    );
    std::fs::create_dir_all(&home)?;
    let lock = std::fs::File::create(home.join("lock"))?;
    if lock.try_lock().is_err() {
        return Err(Error::new(format!(
            "another bisection of {} is running (lock {})",
            tree.display(),
            home.join("lock").display()
        )));
    }
    Ok((home, lock))
}

/// The tree's clone under `home`: a clone made earlier is reused unless it
/// cannot see every one of `shas` (the tree was remade and its objects went
/// with it): then it is made again. The build folder goes by the clone's
/// path, so builds stay incremental.
fn clone_seeing(sh: &Shell, tree: &Path, home: &Path, shas: &[&str]) -> Result<PathBuf> {
    let clone = home.join("linux");
    let has = |sha: &str| {
        let spec = format!("{sha}^{{commit}}");
        cmd!(sh, "git -C {clone} cat-file -e {spec}")
            .quiet()
            .ignore_stderr()
            .run()
            .is_ok()
    };
    if !(clone.join(".git").is_dir() && shas.iter().all(|s| has(s))) {
        let _ = std::fs::remove_dir_all(&clone);
        eprintln!(
            "[bisect] cloning {} (shared objects) into {}",
            tree.display(),
            clone.display()
        );
        cmd!(
            sh,
            "git clone --quiet --shared --no-checkout {tree} {clone}"
        )
        .quiet()
        .run()?;
    }
    Ok(clone)
}

/// The failure class to look for (the first seen at BAD) and the share of
/// BAD's runs that show it; an error when BAD does not fail at all.
fn failure_at_bad(case: &str, bad: &str, at_bad: &Tested) -> Result<(String, f64)> {
    let failures: Vec<&String> = at_bad
        .runs
        .iter()
        .filter_map(|r| match r {
            Run::Failed { class, .. } => Some(class),
            _ => None,
        })
        .collect();
    let Some(bad_class) = failures.first().map(|c| c.to_string()) else {
        return Err(Error::new(format!(
            "{case} does not fail at BAD {} in {} run(s) ({}): nothing to bisect",
            short(bad),
            at_bad.runs.len(),
            show_runs(&at_bad.runs)
        )));
    };
    let rate =
        failures.iter().filter(|c| ***c == bad_class).count() as f64 / at_bad.runs.len() as f64;
    eprintln!(
        "[bisect] at BAD the case fails with `{bad_class}` in {:.0}% of {} run(s)",
        rate * 100.0,
        at_bad.runs.len()
    );
    Ok((bad_class, rate))
}

impl Bisected {
    /// What git said at the end, and the commits tested on the way.
    fn of(said: GitSaid, log: &[Tested]) -> Bisected {
        Bisected {
            first: match said {
                GitSaid::Found(sha) => Some(sha),
                _ => None,
            },
            skipped: log
                .iter()
                .filter_map(|t| match &t.verdict {
                    Verdict::Skip(why) if why != "BAD" => Some((t.sha.clone(), why.clone())),
                    _ => None,
                })
                .collect(),
            tested: log.len(),
        }
    }
}

/// Build `sha` and run the case on it (up to `repeat` times; with a
/// `bad_class`, stopping at the first run that shows it).
fn test(
    opts: &Options,
    b: &BisectOptions,
    sh: &Shell,
    clone: &Path,
    dir: &Path,
    sha: &str,
    bad_class: Option<&str>,
) -> Result<Tested> {
    cmd!(sh, "git -C {clone} checkout --quiet --force --detach {sha}")
        .quiet()
        .run()?;
    let subject = cmd!(sh, "git -C {clone} log -1 --format=%s {sha}")
        .quiet()
        .read()?;
    eprintln!("[bisect] testing {} {subject}", short(sha));
    let artifacts = dir.join("runs").join(short(sha));
    let mut o = opts.clone();
    o.kernels = vec![KernelSpec::Tree(clone.to_path_buf())];
    o.artifacts = artifacts.clone();
    let env = match lab::vm_env(&o) {
        Ok(env) => keep_parts(env, &dir.join("kernels").join(short(sha)))?,
        Err(e) => {
            let why = format!(
                "does not build: {}",
                e.to_string().lines().next().unwrap_or_default()
            );
            eprintln!("[bisect] {} {why}: skipped", short(sha));
            return Ok(Tested {
                sha: sha.to_string(),
                verdict: Verdict::Skip(why.clone()),
                runs: vec![Run::Other(why)],
                artifacts,
            });
        }
    };
    let mut runs = Vec::new();
    for _ in 0..b.repeat {
        let mut env = env.clone();
        env.push((vars::KEEP.name, "1".to_string()));
        // Every run boots: each commit is a new kernel (a snapshot would
        // never be restored), and the runs of `--repeat` must be
        // independent boots, or a flaky failure that depends on the boot
        // would repeat one draw N times.
        env.retain(|(k, _)| *k != vars::COLD.name);
        env.push((vars::COLD.name, "1".to_string()));
        let r = lab::harness_run_env(&o, env, &["--exact".to_string(), b.case.clone()])?;
        let run = Run::of(&r, &b.case);
        let shows_bad =
            matches!((&run, bad_class), (Run::Failed { class, .. }, Some(b)) if class == b);
        runs.push(run);
        if shows_bad {
            break;
        }
    }
    let verdict = match bad_class {
        Some(class) => judge(&runs, class),
        None => Verdict::Skip("BAD".into()),
    };
    let label = match bad_class {
        Some(_) => verdict.git_word(),
        None => "at BAD",
    };
    eprintln!("[bisect] {} {label}: {}", short(sha), show_runs(&runs));
    Ok(Tested {
        sha: sha.to_string(),
        verdict,
        runs,
        artifacts: artifacts.join(&b.case),
    })
}

impl Run {
    /// What one harness run said of `case`.
    fn of(r: &lab::HarnessRun, case: &str) -> Run {
        let Some(c) = r.cases.iter().find(|c| c.case == case) else {
            return Run::Other(format!("the case did not run:\n{}", r.output));
        };
        let message = c.message.as_deref().unwrap_or_default();
        match c.status {
            Status::Passed => Run::Passed,
            Status::Failed => Run::Failed {
                class: c.class.clone().unwrap_or_else(|| "?".to_string()),
                first: message.lines().next().unwrap_or_default().to_string(),
            },
            Status::Ignored | Status::KnownFailure => {
                Run::Other(format!("{}: {message}", c.status))
            }
        }
    }
}

/// Copy the commit's kernel, config and initramfs out of the build cache
/// (the next commit's build replaces them there), and point the run at the
/// copies, so each commit's reproduce.sh keeps working.
/// The kernel's symbol table, beside its bzImage (see
/// harness/src/run/mod.rs `start_poison`).
const SYSTEM_MAP: &str = "System.map";

fn keep_parts(env: Vec<(&'static str, String)>, to: &Path) -> Result<Vec<(&'static str, String)>> {
    std::fs::create_dir_all(to)?;
    env.into_iter()
        .map(|(k, v)| {
            let file = match k {
                k if k == vars::KERNEL.name => "bzImage",
                k if k == vars::INITRD.name => "initrd",
                k if k == vars::KERNEL_CONFIG.name => "config",
                _ => return Ok((k, v)),
            };
            let dest = to.join(file);
            std::fs::copy(&v, &dest)?;
            // The harness reads the kernel's symbols from the System.map
            // beside its bzImage (the poison model, on by default): a copied
            // kernel without it fails every case at setup.
            if k == vars::KERNEL.name {
                let map = Path::new(&v).with_file_name(SYSTEM_MAP);
                std::fs::copy(&map, to.join(SYSTEM_MAP))
                    .map_err(|e| Error::new(format!("{}: {e}", map.display())))?;
            }
            Ok((k, dest.display().to_string()))
        })
        .collect()
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

fn show_runs(runs: &[Run]) -> String {
    runs.iter()
        .map(|r| match r {
            Run::Passed => "passed".to_string(),
            Run::Failed { class, .. } => format!("failed `{class}`"),
            Run::Other(m) => m.lines().next().unwrap_or_default().to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The result: the commit, the case's output on the last good commit and on
/// the first bad one, their reproducers, and every commit tested.
fn report(
    sh: &Shell,
    clone: &Path,
    said: &GitSaid,
    log: &[Tested],
    rate: f64,
    repeat: u32,
) -> Result<String> {
    let mut out = String::from("# Bisect\n\n");
    match said {
        GitSaid::Found(sha) => {
            let show = cmd!(sh, "git -C {clone} show --stat --format=fuller {sha}")
                .quiet()
                .read()?;
            let _ = writeln!(out, "First bad commit:\n\n```\n{show}\n```\n");
        }
        GitSaid::OnlySkipped(shas) => {
            let _ = writeln!(
                out,
                "Only skipped commits are left; the first bad commit is one of:\n{}\n",
                shas.iter()
                    .map(|s| format!("- {s}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        GitSaid::Next => {}
    }
    if rate < 1.0 {
        let _ = writeln!(
            out,
            "The failure showed in {:.0}% of the runs at BAD: a commit judged good after {repeat} passing runs is bad with probability {:.2}% at most.\n",
            rate * 100.0,
            miss_chance(rate, repeat) * 100.0
        );
    }
    let _ = writeln!(out, "| commit | verdict | runs |\n|---|---|---|");
    for t in log {
        let verdict = match &t.verdict {
            Verdict::Skip(why) if why == "BAD" => "BAD".to_string(),
            Verdict::Skip(why) => format!("skip ({why})"),
            v => v.git_word().to_string(),
        };
        let _ = writeln!(
            out,
            "| {} | {verdict} | {} |",
            short(&t.sha),
            show_runs(&t.runs)
        );
    }
    if let GitSaid::Found(first) = said {
        either_side(sh, clone, first, log, &mut out)?;
    }
    Ok(out)
}

/// The last good commit (the first bad's parent) and the first bad one,
/// each with its reproducer and the end of its steps.log.
fn either_side(
    sh: &Shell,
    clone: &Path,
    first: &str,
    log: &[Tested],
    out: &mut String,
) -> Result<()> {
    let first_bad = log.iter().find(|t| t.sha == *first);
    let parent = cmd!(sh, "git -C {clone} rev-parse {first}^")
        .quiet()
        .read()?
        .trim()
        .to_string();
    let last_good = log
        .iter()
        .find(|t| t.sha == parent && t.verdict == Verdict::Good);
    for (what, t) in [
        ("last good (the parent)", last_good),
        ("first bad", first_bad),
    ] {
        let Some(t) = t else {
            let _ = writeln!(out, "\n## {what}: not tested directly\n");
            continue;
        };
        let steps = std::fs::read_to_string(t.artifacts.join("steps.log")).unwrap_or_default();
        let tail: Vec<&str> = steps.lines().rev().take(15).collect();
        let _ = writeln!(
            out,
            "\n## {what}: {}\n\nreproducer: {}\n\n```\n{}\n```",
            short(&t.sha),
            t.artifacts.join("reproduce.sh").display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(class: &str) -> Run {
        Run::Failed {
            class: class.into(),
            first: format!("{class} (message)"),
        }
    }

    #[test]
    fn a_kept_kernel_keeps_its_symbols() {
        let dir = crate::util::test_dir("keep");
        let (built, kept) = (dir.join("built"), dir.join("kept"));
        std::fs::create_dir_all(&built).unwrap();
        std::fs::write(built.join("bzImage"), "kernel").unwrap();
        std::fs::write(built.join(SYSTEM_MAP), "ffffffff81000000 T _text").unwrap();
        let env = vec![
            (
                vars::KERNEL.name,
                built.join("bzImage").display().to_string(),
            ),
            (vars::ACCEL.name, "tcg".to_string()),
        ];
        let env = keep_parts(env, &kept).unwrap();
        assert_eq!(env[0].1, kept.join("bzImage").display().to_string());
        assert_eq!(env[1].1, "tcg");
        assert_eq!(
            std::fs::read_to_string(kept.join(SYSTEM_MAP)).unwrap(),
            "ffffffff81000000 T _text"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_the_same_failure_is_bad() {
        let bad = "step 3 failed: badblocks # expected";
        assert_eq!(judge(&[failed(bad)], bad), Verdict::Bad);
        assert_eq!(judge(&[Run::Passed, failed(bad)], bad), Verdict::Bad);
        assert_eq!(judge(&[Run::Passed, Run::Passed], bad), Verdict::Good);
        assert_eq!(
            judge(&[failed("boot")], bad),
            Verdict::Skip("fails differently: boot (message)".into())
        );
        assert!(matches!(
            judge(&[Run::Other("ignored".into())], bad),
            Verdict::Skip(_)
        ));
        assert!(matches!(judge(&[], bad), Verdict::Skip(_)));
    }

    #[test]
    fn confidence_of_a_good_verdict() {
        assert_eq!(miss_chance(1.0, 1), 0.0);
        assert!((miss_chance(0.5, 4) - 0.0625).abs() < 1e-12);
    }

    #[test]
    fn git_bisect_answers_are_read() {
        assert_eq!(
            parse_git("Bisecting: 3 revisions left to test after this (roughly 2 steps)\n[abc] x"),
            GitSaid::Next
        );
        let sha = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(
            parse_git(&format!("{sha} is the first bad commit\ncommit {sha}\n")),
            GitSaid::Found(sha.into())
        );
        let out = format!("There are only 'skip'ped commits left to test.\nThe first bad commit could be any of:\n{sha}\nfedcba9876543210fedcba9876543210fedcba98\nWe cannot bisect more!\n");
        assert_eq!(
            parse_git(&out),
            GitSaid::OnlySkipped(vec![
                sha.into(),
                "fedcba9876543210fedcba9876543210fedcba98".into()
            ])
        );
    }
}
