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
use std::process::Stdio;
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

    let tmp = std::env::temp_dir().join(format!("pmem-lab-bench-{}.cpio", std::process::id()));
    let images = timed(b.runs, || {
        image::build_to(&opts.workspace, &built.kernel, &tmp)
    })?;
    let _ = std::fs::remove_file(&tmp);
    rows.push(("initramfs build".into(), stats(&images)));

    let ours = timed(b.runs, || {
        boot_to_init(&qemu, &built.kernel.bzimage, &built.initrd).map(|_| ())
    })?;
    rows.push(("boot to /init, lab kernel".into(), stats(&ours)));
    match debian_kernel(&opts.cache) {
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
/// Debian's stock kernel for the comparison: /boot's, else the image of
/// `linux-image-amd64` extracted into the cache (downloaded, never
/// installed: the machine is the user's).
fn debian_kernel(cache: &Path) -> Result<PathBuf> {
    let vmlinuz_in = |dir: &Path| {
        std::fs::read_dir(dir).ok().and_then(|d| {
            d.flatten().map(|e| e.path()).find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
            })
        })
    };
    if let Some(k) = vmlinuz_in(Path::new("/boot")) {
        return Ok(k);
    }
    let dest = cache.join("stock-kernel");
    if let Some(k) = vmlinuz_in(&dest.join("root/boot")) {
        return Ok(k);
    }
    if util::find_in_path("apt-get").is_none() {
        return Err(Error::new("no /boot/vmlinuz-* and no apt-get"));
    }
    let plan = crate::deps::apt::simulate(&["linux-image-amd64"])?;
    let image = plan
        .installs
        .iter()
        .find(|i| i.package.starts_with("linux-image-") && i.package != "linux-image-amd64")
        .ok_or_else(|| Error::new("apt plans no linux-image-* package"))?;
    eprintln!(
        "[bench] extracting {} into {} for the stock-kernel comparison",
        image.package,
        dest.display()
    );
    let debs = dest.join("debs");
    fs_err::create_dir_all(&debs)?;
    crate::deps::extract_packages(&[image.package.as_str()], &debs, &dest.join("root"))?;
    vmlinuz_in(&dest.join("root/boot"))
        .ok_or_else(|| Error::new(format!("{} holds no boot/vmlinuz-*", image.package)))
}

/// Timings of one case over several runs.
struct CaseTimings {
    boots: Vec<Duration>,
    cases: Vec<Duration>,
    /// Empty when the case's machine does not use the lab's ACPI tables.
    tables: Vec<Duration>,
}

/// Run `case` `n` times through the harness; its `case` event gives boot to
/// agent ready, the whole case, and the ACPI table preparation.
fn case_timings(opts: &Options, case: &str, n: usize) -> Result<CaseTimings> {
    let mut t = CaseTimings {
        boots: Vec::new(),
        cases: Vec::new(),
        tables: Vec::new(),
    };
    for _ in 0..n.max(1) {
        let run = lab::harness_run(opts, &[case.to_string(), "--exact".into()])?;
        let event = run
            .cases
            .iter()
            .find(|e| e["case"] == case && e["status"] == "passed")
            .ok_or_else(|| Error::new(format!("{case} did not pass:\n{}", run.output)))?;
        let ms = |key: &str| event[key].as_u64().map(Duration::from_millis);
        let need =
            |key: &str| ms(key).ok_or_else(|| Error::new(format!("no {key} in the event {event}")));
        t.boots.push(need("boot_ms")?);
        t.cases.push(need("duration_ms")?);
        t.tables.extend(ms("acpi_tables_ms"));
    }
    Ok(t)
}

fn suite(opts: &Options) -> Result<()> {
    let run = lab::harness_run(opts, &[])?;
    let failed: Vec<&str> = run
        .cases
        .iter()
        .filter(|e| e["status"] == "failed")
        .filter_map(|e| e["case"].as_str())
        .collect();
    if run.success && failed.is_empty() && !run.cases.is_empty() {
        Ok(())
    } else {
        Err(Error::new(format!(
            "the suite failed during the benchmark (failed: {}):\n{}",
            failed.join(", "),
            run.output
        )))
    }
}
