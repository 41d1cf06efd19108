//! `cargo xtask bench`: how fast the lab is, as medians over several runs
//! (these machines are noisy; single timings mean little).
//!
//! Figures: the last cold kernel build (recorded by the build itself; rerun
//! one with `cargo xtask bench --cold`), building the initramfs, boot to /init for the lab's
//! kernel and for Debian's stock kernel on the same image (and their ratio),
//! boot to agent ready and a typical case (from the harness's own timing
//! line), and the whole suite.

use crate::lab;
use crate::progress::fmt_duration;
use crate::util::{self, Error, Result};
use crate::{image, Options};
use pmem_lab_env::qemu::Qemu;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A typical case: one NVDIMM, setup, a few ndctl calls.
const TYPICAL_CASE: &str = "namespaces/devdax-2m";
/// The same machine shape with QEMU's own ACPI table (`root_dsm: qemu`): the
/// cost of the lab's table is the difference.
const STOCK_TABLE_CASE: &str = "ars/stock-qemu";

pub struct BenchOptions {
    pub runs: usize,
    pub suite_runs: usize,
    pub cold: bool,
}

pub fn run(opts: &Options, b: &BenchOptions) -> Result<()> {
    if b.cold {
        let root = opts.cache.join("kernel");
        eprintln!(
            "[bench] --cold: removing {} to rebuild the kernel from scratch",
            root.display()
        );
        let _ = std::fs::remove_dir_all(&root);
    }
    let built = lab::build(opts)?;
    let qemu = lab::qemu(opts)?;
    let mut rows: Vec<(String, String)> = Vec::new();

    let cold = std::fs::read_to_string(opts.cache.join("kernel/cold-build.txt")).ok();
    rows.push((
        "kernel build, cold (last recorded)".into(),
        match cold
            .as_deref()
            .map(str::split_whitespace)
            .map(|mut w| (w.next(), w.next()))
        {
            Some((Some(secs), Some(objs))) => {
                format!(
                    "{} ({objs} objects)",
                    fmt_duration(Duration::from_secs(secs.parse().unwrap_or(0)))
                )
            }
            _ => "not recorded yet: run `cargo xtask bench --cold`".into(),
        },
    ));

    let tmp = std::env::temp_dir().join(format!("pmem-lab-bench-{}.cpio.gz", std::process::id()));
    let images = timed(b.runs, || {
        image::build_to(&opts.workspace, &built.kernel, &tmp)
    })?;
    let _ = std::fs::remove_file(&tmp);
    rows.push(("initramfs build".into(), stats(&images)));

    let ours = timed(b.runs, || {
        boot_to_init(&qemu, &built.kernel.bzimage, &built.initrd).map(|_| ())
    })?;
    rows.push(("boot to /init, lab kernel".into(), stats(&ours)));
    match debian_kernel() {
        Ok(stock) => {
            let theirs = timed(b.runs, || {
                boot_to_init(&qemu, &stock, &built.initrd).map(|_| ())
            })?;
            rows.push((
                format!("boot to /init, Debian {}", stock.display()),
                stats(&theirs),
            ));
            rows.push((
                "ratio Debian / lab kernel (medians)".into(),
                format!(
                    "{:.2}x",
                    median(&theirs).as_secs_f64() / median(&ours).as_secs_f64()
                ),
            ));
        }
        Err(e) => rows.push((
            "boot to /init, Debian kernel".into(),
            format!("not measured: {e}"),
        )),
    }

    let typical = case_timings(opts, TYPICAL_CASE, b.runs)?;
    rows.push((
        "boot to agent ready (QEMU start -> agent)".into(),
        stats(&typical.boots),
    ));
    rows.push((
        format!("typical case ({TYPICAL_CASE})"),
        stats(&typical.cases),
    ));
    if !typical.tables.is_empty() {
        rows.push((
            "lab ACPI tables before QEMU starts".into(),
            stats(&typical.tables),
        ));
    }
    let stock = case_timings(opts, STOCK_TABLE_CASE, b.runs)?;
    rows.push((
        "boot to agent ready, QEMU's own ACPI table".into(),
        stats(&stock.boots),
    ));
    rows.push((
        "ratio boot lab table / QEMU's table (medians)".into(),
        format!(
            "{:.2}x",
            median(&typical.boots).as_secs_f64() / median(&stock.boots).as_secs_f64()
        ),
    ));

    if b.suite_runs > 0 {
        let suite = timed(b.suite_runs, || suite(opts))?;
        rows.push(("whole suite (cargo xtask lab, warm)".into(), stats(&suite)));
    }

    println!("\npmem-lab bench ({} runs each; median, min..max)", b.runs);
    for (what, figure) in rows {
        println!("  {what:<48} {figure}");
    }
    Ok(())
}

fn timed(n: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<Duration>> {
    (0..n.max(1))
        .map(|_| {
            let t = Instant::now();
            f().map(|_| t.elapsed())
        })
        .collect()
}

fn median(v: &[Duration]) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    s[s.len() / 2]
}

fn stats(v: &[Duration]) -> String {
    let mut s = v.to_vec();
    s.sort();
    format!(
        "{:.2}s ({:.2}..{:.2})",
        median(&s).as_secs_f64(),
        s[0].as_secs_f64(),
        s[s.len() - 1].as_secs_f64()
    )
}

/// Boot `kernel` with `initrd` under TCG until the kernel runs /init.
fn boot_to_init(qemu: &Qemu, kernel: &Path, initrd: &Path) -> Result<Duration> {
    let start = Instant::now();
    let mut child = crate::accel::bare_boot(qemu, "tcg", kernel, Some(initrd), "2G")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Error::new(format!("cannot start QEMU: {e}")))?;
    let stdout = child.stdout.take().expect("piped");
    let mut seen = None;
    for line in BufReader::new(stdout)
        .lines()
        .map_while(std::result::Result::ok)
    {
        if line.contains("Run /init as init process") {
            seen = Some(start.elapsed());
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    seen.ok_or_else(|| Error::new(format!("{} never ran /init", kernel.display())))
}

/// Debian's stock kernel image, installed with apt-get (as root) if absent.
fn debian_kernel() -> Result<PathBuf> {
    let find = || {
        std::fs::read_dir("/boot").ok().and_then(|d| {
            d.flatten().map(|e| e.path()).find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
            })
        })
    };
    if let Some(k) = find() {
        return Ok(k);
    }
    if util::find_in_path("apt-get").is_none() {
        return Err(Error::new("no /boot/vmlinuz-* and no apt-get"));
    }
    eprintln!("[bench] installing linux-image-amd64 for the stock-kernel comparison");
    let ok = Command::new("apt-get")
        .args([
            "install",
            "-y",
            "--no-install-recommends",
            "linux-image-amd64",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        return Err(Error::new("apt-get install linux-image-amd64 failed"));
    }
    find().ok_or_else(|| Error::new("linux-image-amd64 installed no /boot/vmlinuz-*"))
}

/// Timings of one case over several runs.
struct CaseTimings {
    boots: Vec<Duration>,
    cases: Vec<Duration>,
    /// Empty when the case's machine does not use the lab's ACPI tables.
    tables: Vec<Duration>,
}

/// Run `case` `n` times through the harness; its timing line gives boot to
/// agent ready, the whole case, and the ACPI table preparation.
fn case_timings(opts: &Options, case: &str, n: usize) -> Result<CaseTimings> {
    let mut t = CaseTimings {
        boots: Vec::new(),
        cases: Vec::new(),
        tables: Vec::new(),
    };
    for _ in 0..n.max(1) {
        let out = lab::harness_output(opts, &[case.to_string(), "--exact".into()])?;
        let line = out
            .lines()
            .find(|l| l.starts_with(case) && l.contains("agent ready in"))
            .ok_or_else(|| Error::new(format!("{case} did not pass:\n{out}")))?;
        let secs = |after: &str| -> Option<Duration> {
            let rest = &line[line.find(after)? + after.len()..];
            rest.split('s')
                .next()?
                .trim()
                .parse::<f64>()
                .ok()
                .map(Duration::from_secs_f64)
        };
        let need = |what: &str| {
            secs(what).ok_or_else(|| Error::new(format!("cannot read {what:?} in {line:?}")))
        };
        t.boots.push(need("agent ready in")?);
        t.cases.push(need("case took")?);
        t.tables.extend(secs("ACPI tables"));
    }
    Ok(t)
}

fn suite(opts: &Options) -> Result<()> {
    let out = lab::harness_output(opts, &[])?;
    if out.contains(" 0 failed") {
        Ok(())
    } else {
        Err(Error::new(format!(
            "the suite failed during the benchmark:\n{out}"
        )))
    }
}
