//! `cargo xtask bisect-test`: the bisect, tested end to end on a kernel
//! history made for it.
//!
//! From Debian's 6.12 source (read, never written) the lab makes a git
//! repository under `<cache>/bisect-test/linux` whose commits change one
//! driver file at a time: a harmless comment, the planted break of how an
//! error address becomes a badblock (drivers/nvdimm/badrange.c, one sector
//! too far), a commit that does not build and its fix, two more harmless
//! comments.
//! A second branch plants the same break, but only in half of the calls: a
//! flaky failure. `cargo xtask bisect` must name the planted commit on both
//! (the flaky one with `--repeat`), and on the steady one it must have
//! skipped the commit that does not build (the first midpoint) rather than
//! blamed it.
//! The commits are made with git's plumbing (hash-object, update-index,
//! commit-tree) against an index of the lab's own, so the source folder is
//! only read.

use crate::bisect::{self, BisectOptions};
use crate::deps::DebianKernel;
use crate::kernel::{self, KernelSpec};
use crate::util::{Error, Result};
use crate::Options;
use std::path::Path;
use std::time::Instant;
use xshell::{cmd, Shell};

/// The case the planted break fails (its first and only step).
pub const CASE: &str = "badblocks/latent-sector";
const BADRANGE: &str = "drivers/nvdimm/badrange.c";
const RIGHT: &str = "start_sector = div_u64(ns_offset, sector_size);";
/// Bump when the history below changes.
const HISTORY: &str = "bisect-test-history-2";

/// One commit: its subject, the file it changes and how (from the file as
/// the previous commit left it, and as Debian ships it).
struct Change {
    subject: &'static str,
    path: &'static str,
    edit: fn(&str, &str) -> String,
}

fn comment(text: &str, _original: &str) -> String {
    format!("{text}\n/* pmem-lab bisect-test: a harmless change */\n")
}

/// The commit every branch starts with, and a branch's own commits after
/// it: the planted break, then a commit that does not build and its fix
/// (so the bisection's first midpoint cannot be built and must be
/// skipped), then two harmless commits.
fn history(planted: Change) -> Vec<Change> {
    vec![
        planted,
        Change {
            subject: "nvdimm/badrange: a change that does not build",
            path: BADRANGE,
            edit: |t, _| format!("{t}{BROKEN}\n"),
        },
        Change {
            subject: "nvdimm/badrange: fix the build",
            path: BADRANGE,
            edit: |t, _| t.replace(BROKEN, ""),
        },
        Change {
            subject: "dax: a harmless comment",
            path: "drivers/dax/bus.c",
            edit: comment,
        },
        Change {
            subject: "nvdimm/region: a harmless comment",
            path: "drivers/nvdimm/region_devs.c",
            edit: comment,
        },
    ]
}

/// No trailing newline: git's output is read with it trimmed.
const BROKEN: &str = "\nint pmem_lab_bisect_test_broken = ;";

fn first() -> Change {
    Change {
        subject: "nvdimm: a harmless comment",
        path: "drivers/nvdimm/core.c",
        edit: comment,
    }
}

fn steady() -> Change {
    Change {
        subject: "nvdimm/badrange: PLANTED badblocks one sector too far",
        path: BADRANGE,
        edit: |t, _| t.replace(RIGHT, "start_sector = div_u64(ns_offset, sector_size) + 1;"),
    }
}

fn flaky() -> Change {
    Change {
        subject: "nvdimm/badrange: PLANTED badblocks one sector too far, half of the time",
        path: BADRANGE,
        edit: |t, _| {
            t.replacen("#include", "#include <linux/random.h>\n#include", 1)
                .replace(
                    RIGHT,
                    "start_sector = div_u64(ns_offset, sector_size) + get_random_u32_below(2);",
                )
        },
    }
}

/// A git repository with the history; returns (base, steady tip, steady
/// planted, flaky tip, flaky planted).
fn make_repo(sh: &Shell, src: &Path, repo: &Path) -> Result<[String; 5]> {
    let marker = repo.join(".git").join(HISTORY);
    if let Ok(text) = std::fs::read_to_string(&marker) {
        let v: Vec<String> = text.split_whitespace().map(str::to_string).collect();
        if let Ok(a) = <[String; 5]>::try_from(v) {
            return Ok(a);
        }
    }
    let _ = std::fs::remove_dir_all(repo);
    std::fs::create_dir_all(repo)?;
    eprintln!(
        "[bisect-test] making a git history from {} in {} (once)",
        src.display(),
        repo.display()
    );
    let git_dir = repo.join(".git");
    cmd!(sh, "git init --quiet {repo}").quiet().run()?;
    let _env = [
        sh.push_env("GIT_DIR", &git_dir),
        sh.push_env("GIT_WORK_TREE", src),
        sh.push_env("GIT_AUTHOR_NAME", "pmem-lab"),
        sh.push_env("GIT_AUTHOR_EMAIL", "pmem-lab@localhost"),
        sh.push_env("GIT_COMMITTER_NAME", "pmem-lab"),
        sh.push_env("GIT_COMMITTER_EMAIL", "pmem-lab@localhost"),
    ];
    // git resolves paths from the current directory: work from the source.
    let _dir = sh.push_dir(src);
    let t = Instant::now();
    // --force: Debian's top-level .gitignore ignores everything at the top
    // level (its packaging repository holds only debian/).
    cmd!(sh, "git add --all --force").quiet().run()?;
    let tree = cmd!(sh, "git write-tree").quiet().read()?;
    let base = cmd!(sh, "git commit-tree {tree} -m base").quiet().read()?;
    eprintln!(
        "[bisect-test] base commit of the whole tree in {:.0}s",
        t.elapsed().as_secs_f64()
    );
    // Commit `changes` one by one on `parent`; the last commit and the
    // planted one.
    let commit_all = |parent: &str, changes: &[Change]| -> Result<(String, String)> {
        cmd!(sh, "git read-tree {parent}").quiet().run()?;
        let mut head = parent.to_string();
        let mut planted = String::new();
        for c in changes {
            let path = c.path;
            let now = cmd!(sh, "git cat-file blob :{path}").quiet().read()?;
            let original = std::fs::read_to_string(src.join(path))?;
            let text = (c.edit)(&now, &original);
            let blob = cmd!(sh, "git hash-object -w --stdin --path {path}")
                .quiet()
                .stdin(text)
                .read()?;
            let info = format!("100644,{blob},{path}");
            cmd!(sh, "git update-index --cacheinfo {info}")
                .quiet()
                .run()?;
            let tree = cmd!(sh, "git write-tree").quiet().read()?;
            let subject = c.subject;
            head = cmd!(sh, "git commit-tree {tree} -p {head} -m {subject}")
                .quiet()
                .read()?;
            if subject.contains("PLANTED") {
                planted = head.clone();
            }
        }
        Ok((head, planted))
    };
    let (fork, _) = commit_all(&base, &[first()])?;
    let (steady_tip, steady_planted) = commit_all(&fork, &history(steady()))?;
    let (flaky_tip, flaky_planted) = commit_all(&fork, &history(flaky()))?;
    cmd!(sh, "git update-ref refs/heads/master {steady_tip}")
        .quiet()
        .run()?;
    cmd!(sh, "git update-ref refs/heads/flaky {flaky_tip}")
        .quiet()
        .run()?;
    let all = [base, steady_tip, steady_planted, flaky_tip, flaky_planted];
    std::fs::write(&marker, all.join("\n"))?;
    Ok(all)
}

pub fn run(opts: &Options, repeat: u32) -> Result<()> {
    let sh = Shell::new()?;
    let debian = KernelSpec::Debian(DebianKernel::V6_12);
    crate::deps::ensure(&opts.host(), &[DebianKernel::V6_12])?;
    let src = kernel::source(&debian, &opts.cache)?;
    let repo = opts.cache.join("bisect-test").join("linux");
    let [base, steady_tip, steady_planted, flaky_tip, flaky_planted] =
        make_repo(&sh, &src.dir, &repo)?;
    let mut o = opts.clone();
    o.kernels = vec![KernelSpec::Tree(repo.clone())];
    let mut results = Vec::new();
    for (what, bad, planted, runs) in [
        ("steady", &steady_tip, &steady_planted, 1),
        ("flaky", &flaky_tip, &flaky_planted, repeat),
    ] {
        let t = Instant::now();
        let found = bisect::run(
            &o,
            &BisectOptions {
                case: CASE.to_string(),
                tree: repo.clone(),
                good: base.clone(),
                bad: bad.clone(),
                repeat: runs,
            },
        )?;
        let took = t.elapsed().as_secs_f64();
        let no_build = found
            .skipped
            .iter()
            .filter(|(_, why)| why.starts_with("does not build"))
            .count();
        // The steady bisection's first midpoint does not build.
        let ok =
            found.first.as_deref() == Some(planted.as_str()) && (what == "flaky" || no_build > 0);
        eprintln!(
            "[bisect-test] {what}: {} in {took:.0}s, {} commit(s) built and tested, {no_build} skipped as not building (planted {planted})",
            match &found.first {
                Some(f) if *f == *planted => format!("found the planted commit {f}"),
                Some(f) => format!("blamed {f}, which is NOT the planted commit"),
                None => "found no single commit".to_string(),
            },
            found.tested,
        );
        results.push((what, ok, took));
    }
    let failed: Vec<&str> = results.iter().filter(|r| !r.1).map(|r| r.0).collect();
    if failed.is_empty() {
        println!(
            "bisect-test: passed (steady {:.0}s, flaky with --repeat {repeat} {:.0}s)",
            results[0].2, results[1].2
        );
        Ok(())
    } else {
        Err(Error::new(format!(
            "bisect-test: the bisect missed the planted commit ({})",
            failed.join(", ")
        )))
    }
}
