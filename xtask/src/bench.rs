//! `cargo xtask bench`: how fast the lab is, as medians over several runs
//! (these machines are noisy; single timings mean little).
//!
//! Figures: the last cold kernel build (recorded by the build itself; rerun
//! one with `cargo xtask bench --cold`), building the initramfs, boot to /init for the lab's
//! kernel and for Debian's stock kernel on the same image (and their ratio),
//! case start (QEMU start to agent ready) and a typical case, cold and
//! restored from a VM snapshot (from the harness's events), snapshot sizes,
//! the poison model's costs (`poison/read-cost`: a sequential read
//! with and without a poisoned line armed elsewhere, the lab's stop at a
//! load, the guest program's own load-to-signal time), and the whole suite
//! cold, with snapshots for the first time, and again (every case restored).

use crate::lab;
use crate::progress::fmt_duration;
use crate::util::{self, Error, Result};
use crate::{image, Options};
use pmem_lab_env::events::{CaseEvent, Start, Status};
use pmem_lab_env::qemu::Qemu;
use pmem_lab_env::vars;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A typical case: one NVDIMM, setup, a few ndctl calls.
const TYPICAL_CASE: &str = "namespaces/devdax-2m";
/// The same machine shape with QEMU's own ACPI table (`root_dsm: qemu`): the
/// cost of the lab's table is the difference.
const STOCK_TABLE_CASE: &str = "ars/stock-qemu";
/// The poison model's costs (see the case's description).
const POISON_CASE: &str = "poison/read-cost";

pub struct BenchOptions {
    pub runs: usize,
    pub suite_runs: usize,
    pub poison_suite_runs: usize,
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
    let mut rows: Rows = vec![kernel_row(opts)];
    rows.extend(boot_rows(opts, &qemu, &built, b.runs)?);
    // Cold: every VM boots (the figures of earlier benches); restored: the
    // same case from its VM snapshot (the first run below saves it).
    let cold_opts = Options {
        cold: true,
        ..opts.clone()
    };
    let snap_opts = Options {
        cold: false,
        ..opts.clone()
    };
    rows.extend(case_rows(&cold_opts, &snap_opts, b.runs)?);
    rows.extend(poison_costs(opts, b.runs)?);
    let warm = warm_command(opts, TYPICAL_CASE, b.runs)?;
    rows.push((
        format!("warm one-case command (cargo xtask lab {TYPICAL_CASE})"),
        stats(&warm),
    ));
    if b.suite_runs > 0 {
        rows.extend(suite_rows(&cold_opts, &snap_opts, b.suite_runs)?);
    }
    if b.poison_suite_runs > 0 {
        rows.extend(poison_suite(&snap_opts, b.poison_suite_runs)?);
    }
    rows.push((
        "VM snapshots in the cache".into(),
        snapshot_sizes(&opts.cache),
    ));

    println!("\npmem-lab bench ({} runs each; median, min..max)", b.runs);
    for (what, figure) in rows {
        println!("  {what:<48} {figure}");
    }
    Ok(())
}

/// The bench's table: what was measured, and its figure.
type Rows = Vec<(String, String)>;

/// The last cold kernel build the kernel step recorded.
fn kernel_row(opts: &Options) -> (String, String) {
    let cold = std::fs::read_to_string(opts.cache.join("kernel/cold-build.txt")).ok();
    let figure = match cold
        .as_deref()
        .map(str::split_whitespace)
        .map(|mut w| (w.next(), w.next()))
    {
        Some((Some(secs), Some(objs))) => format!(
            "{} ({objs} objects)",
            fmt_duration(Duration::from_secs(secs.parse().unwrap_or(0)))
        ),
        _ => "not recorded yet: run `cargo xtask bench --cold`".into(),
    };
    ("kernel build, cold (last recorded)".into(), figure)
}

/// The initramfs build, and boots to /init of the lab's kernel and of
/// Debian's (where it is installed), with their ratio.
fn boot_rows(
    opts: &Options,
    qemu: &pmem_lab_env::qemu::Qemu,
    built: &lab::Built,
    runs: usize,
) -> Result<Rows> {
    let mut rows = Rows::new();
    let tmp = std::env::temp_dir().join(format!("pmem-lab-bench-{}.cpio", std::process::id()));
    let images = timed(runs, || {
        image::build_to(&opts.workspace, &opts.cache, &built.kernel, &tmp)
    })?;
    let _ = std::fs::remove_file(&tmp);
    rows.push(("initramfs build".into(), stats(&images)));

    let ours = timed(runs, || {
        boot_to_init(qemu, &built.kernel.bzimage, &built.initrd).map(|_| ())
    })?;
    rows.push(("boot to /init, lab kernel".into(), stats(&ours)));
    match debian_kernel(&opts.cache) {
        Ok(stock) => {
            let theirs = timed(runs, || {
                boot_to_init(qemu, &stock, &built.initrd).map(|_| ())
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
    Ok(rows)
}

/// The typical case cold and restored (start and whole case, and their
/// ratios), and a boot with QEMU's own ACPI table against the lab's.
fn case_rows(cold_opts: &Options, snap_opts: &Options, runs: usize) -> Result<Rows> {
    let mut rows = Rows::new();
    let typical = case_timings(cold_opts, TYPICAL_CASE, runs)?;
    rows.push((
        "case start, cold (QEMU start -> agent ready)".into(),
        stats(&typical.boots),
    ));
    rows.push((
        format!("typical case, cold ({TYPICAL_CASE})"),
        stats(&typical.cases),
    ));
    case_timings(snap_opts, TYPICAL_CASE, 1)?;
    let restored = case_timings(snap_opts, TYPICAL_CASE, runs)?;
    if let Some(other) = restored.starts.iter().find(|s| **s != Start::Restored) {
        return Err(Error::new(format!(
            "{TYPICAL_CASE} started `{other}` where a VM snapshot should have been restored"
        )));
    }
    rows.push((
        "case start alone, restored (QEMU start -> agent ready)".into(),
        stats(&restored.boots),
    ));
    rows.push((
        format!("typical case, restored ({TYPICAL_CASE})"),
        stats(&restored.cases),
    ));
    rows.push((
        "ratio cold / restored: start, case (medians)".into(),
        format!(
            "{:.1}x, {:.1}x",
            ratio(&typical.boots, &restored.boots),
            ratio(&typical.cases, &restored.cases)
        ),
    ));
    if !typical.tables.is_empty() {
        rows.push((
            "lab ACPI tables before QEMU starts".into(),
            stats(&typical.tables),
        ));
    }
    let stock = case_timings(cold_opts, STOCK_TABLE_CASE, runs)?;
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
    Ok(rows)
}

/// The whole suite: cold once (every VM boots: a figure for CI's first
/// run, too slow to repeat); then with snapshots: the first run saves what
/// the cache lacks, the next `suite_runs` restore every case they can, at
/// the run's VMs at a time (the default unless `--vms`); then restored at
/// one VM per core, to compare.
fn suite_rows(cold_opts: &Options, snap_opts: &Options, suite_runs: usize) -> Result<Rows> {
    let cores = util::nproc();
    let vms = match snap_opts.vms {
        Some(n) => format!("--vms {n}"),
        None => format!("default {} VMs", pmem_lab_env::parallel::default_vms()),
    };
    let per_core = Options {
        vms: Some(cores),
        ..snap_opts.clone()
    };
    let mut rows = Rows::new();
    for (what, o, runs) in [
        ("whole suite, cold (one run)".to_string(), cold_opts, 1),
        (
            "whole suite, snapshots (first run)".to_string(),
            snap_opts,
            1,
        ),
        (
            format!("whole suite, restored, {vms}"),
            snap_opts,
            suite_runs,
        ),
        (
            format!("whole suite, restored, --vms {cores} (cores)"),
            &per_core,
            suite_runs,
        ),
    ] {
        let mut times = Vec::new();
        let mut events = Vec::new();
        for _ in 0..runs {
            let t = Instant::now();
            events = suite(o)?;
            times.push(t.elapsed());
        }
        rows.push((what, format!("{} [{}]", stats(&times), starts(&events))));
    }
    Ok(rows)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poison_figures_come_from_steps_log() {
        let log = "--- step 2 `warm-up`: [..]\n    134217728 bytes (134 MB, 128 MiB) copied, 0.9 s, 150 MB/s\n\
            --- step 3 `sequential read`: [..] -> exit 0 in 900 ms\n  stderr:\n    134217728 bytes (134 MB, 128 MiB) copied, 0.683182 s, 196 MB/s\n\
            --- step 4 `sequential read`: [..]\n    134217728 bytes (134 MB, 128 MiB) copied, 0.5 s, 270 MB/s\n\
            --- step 5 `a program loads the line`: [..]\n  stdout:\n    0x401000 SIGBUS code=4 addr=+0x400000 lsb=21\n    load-to-signal 2479 us\n\
            --- step 5 `a program loads the line`: machine check: user load on CPU 0 at RIP 0x4016ca of line 0x120a01000 (VA 0x7fb6b6201000): `mce 0 9 0xbd80000000000134 0x6 0x120a01000 0x86` (1203 us, rewind 88 us)\n";
        assert_eq!(
            parse_poison_log(log),
            Some(PoisonFigures {
                clean: Duration::from_micros(683_182),
                armed: Duration::from_millis(500),
                stop: Duration::from_micros(1203),
                rewind: Duration::from_micros(88),
                load_to_signal: Duration::from_micros(2479),
            })
        );
        assert_eq!(parse_poison_log("nothing"), None);
    }
}

fn stats(v: &[Duration]) -> String {
    let mut s = v.to_vec();
    s.sort();
    let (mid, lo, hi) = (median(&s), s[0], s[s.len() - 1]);
    // Stops and signals take milliseconds: seconds would print 0.00.
    if mid < Duration::from_millis(100) {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        return format!("{:.2}ms ({:.2}..{:.2})", ms(mid), ms(lo), ms(hi));
    }
    format!(
        "{:.2}s ({:.2}..{:.2})",
        mid.as_secs_f64(),
        lo.as_secs_f64(),
        hi.as_secs_f64()
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

/// What one run of [`POISON_CASE`] shows in its steps.log.
#[derive(Debug, Clone, PartialEq)]
struct PoisonFigures {
    /// dd's own time for the read without and with a line armed.
    clean: Duration,
    armed: Duration,
    /// The lab: from the vCPU's stop at the load to it resumed with the
    /// machine check pending.
    stop: Duration,
    /// Of the stop, finding the load and putting the vCPU back at it.
    rewind: Duration,
    /// The guest program: just before the load to its SIGBUS handler.
    load_to_signal: Duration,
}

/// dd's `copied, 0.683182 s,` (twice, in step order), the watcher's
/// `machine check: ... (1203 us)` and the program's `load-to-signal N us`.
fn parse_poison_log(text: &str) -> Option<PoisonFigures> {
    let secs = |l: &str| -> Option<Duration> {
        let v = l.split("copied, ").nth(1)?.split(' ').next()?;
        Duration::try_from_secs_f64(v.parse().ok()?).ok()
    };
    let reads: Vec<Duration> = text.lines().filter_map(secs).collect();
    let stop = text.lines().find(|l| l.contains(": machine check: "))?;
    let stop_us: u64 = stop.rsplit('(').next()?.split(' ').next()?.parse().ok()?;
    let rewind_us: u64 = stop
        .rsplit("rewind ")
        .next()?
        .split(' ')
        .next()?
        .parse()
        .ok()?;
    let l2s: u64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("load-to-signal "))?
        .split(' ')
        .next()?
        .parse()
        .ok()?;
    // The first read warms QEMU up (its first touch of each page of the
    // sparse backing file); the second and third are compared.
    Some(PoisonFigures {
        clean: *reads.get(1)?,
        armed: *reads.get(2)?,
        stop: Duration::from_micros(stop_us),
        rewind: Duration::from_micros(rewind_us),
        load_to_signal: Duration::from_micros(l2s),
    })
}

/// Run [`POISON_CASE`] `n` times, keeping its artifacts, and read them.
fn poison_costs(opts: &Options, n: usize) -> Result<Rows> {
    let artifacts = opts
        .cache
        .join(format!("bench-artifacts-{}", std::process::id()));
    let mut figures = Vec::new();
    for _ in 0..n {
        let run = lab::harness_run_with(
            opts,
            &[POISON_CASE.to_string(), "--exact".into()],
            vec![
                (vars::KEEP.name, "1".into()),
                (vars::ARTIFACTS.name, artifacts.display().to_string()),
            ],
        )?;
        let log = artifacts.join(POISON_CASE).join("steps.log");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let f = parse_poison_log(&text).ok_or_else(|| {
            Error::new(format!(
                "{POISON_CASE}: no figures in {} (did it pass?):\n{}",
                log.display(),
                run.output
            ))
        })?;
        figures.push(f);
    }
    let _ = std::fs::remove_dir_all(&artifacts);
    let pick = |f: fn(&PoisonFigures) -> Duration| figures.iter().map(f).collect::<Vec<_>>();
    let (clean, armed) = (pick(|f| f.clean), pick(|f| f.armed));
    Ok(vec![
        (
            "128 MiB O_DIRECT read, nothing poisoned (dd)".into(),
            stats(&clean),
        ),
        (
            "the same, a line armed elsewhere (dd)".into(),
            stats(&armed),
        ),
        (
            "ratio armed / nothing poisoned (medians)".into(),
            format!(
                "{:.2}x",
                median(&armed).as_secs_f64() / median(&clean).as_secs_f64()
            ),
        ),
        (
            "lab's stop at a poisoned load".into(),
            stats(&pick(|f| f.stop)),
        ),
        (
            "  of it, putting the vCPU back at the load".into(),
            stats(&pick(|f| f.rewind)),
        ),
        (
            "load to SIGBUS handler (guest program's clock)".into(),
            stats(&pick(|f| f.load_to_signal)),
        ),
    ])
}

/// The command a developer repeats, as a whole process: `cargo xtask lab
/// CASE` with nothing changed since the last run (one run first, not
/// measured, makes it so), in the user's environment.
fn warm_command(opts: &Options, case: &str, n: usize) -> Result<Vec<Duration>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let run = || -> Result<Duration> {
        let t = Instant::now();
        let out = std::process::Command::new(&cargo)
            .current_dir(&opts.workspace)
            .args(["xtask", "lab", case])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::new(format!("cannot run cargo: {e}")))?;
        let took = t.elapsed();
        if !out.status.success() {
            return Err(Error::new(format!(
                "`cargo xtask lab {case}` failed during the benchmark:\n{}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(took)
    };
    run()?;
    (0..n.max(1)).map(|_| run()).collect()
}

/// Timings of one case over several runs.
struct CaseTimings {
    boots: Vec<Duration>,
    cases: Vec<Duration>,
    /// Empty when the case's machine does not use the lab's ACPI tables.
    tables: Vec<Duration>,
    /// How each run's VM started.
    starts: Vec<Start>,
}

/// Run `case` `n` times through the harness; its `case` event gives boot to
/// agent ready, the whole case, and the ACPI table preparation.
fn case_timings(opts: &Options, case: &str, n: usize) -> Result<CaseTimings> {
    let mut t = CaseTimings {
        boots: Vec::new(),
        cases: Vec::new(),
        tables: Vec::new(),
        starts: Vec::new(),
    };
    for _ in 0..n.max(1) {
        let run = lab::harness_run(opts, &[case.to_string(), "--exact".into()])?;
        let event = run
            .cases
            .iter()
            .find(|e| e.case == case && e.status == Status::Passed)
            .ok_or_else(|| Error::new(format!("{case} did not pass:\n{}", run.output)))?;
        let boot = event
            .boot_ms
            .ok_or_else(|| Error::new(format!("no boot_ms in the event {event:?}")))?;
        t.boots.push(Duration::from_millis(boot));
        t.cases.push(Duration::from_millis(event.duration_ms));
        t.tables
            .extend(event.acpi_tables_ms.map(Duration::from_millis));
        t.starts.extend(event.start);
    }
    Ok(t)
}

/// Medians of a's over b's.
fn ratio(a: &[Duration], b: &[Duration]) -> f64 {
    median(a).as_secs_f64() / median(b).as_secs_f64()
}

/// How a suite's cases started, with the median start of each kind.
fn starts(events: &[CaseEvent]) -> String {
    let mut out = Vec::new();
    for kind in Start::ALL {
        let boots: Vec<Duration> = events
            .iter()
            .filter(|e| e.start == Some(kind))
            .filter_map(|e| e.boot_ms.map(Duration::from_millis))
            .collect();
        if !boots.is_empty() {
            out.push(format!("{} {kind}, start {}", boots.len(), stats(&boots)));
        }
    }
    out.join("; ")
}

/// Count, median and total size on disk of the VM snapshots in the cache.
fn snapshot_sizes(cache: &Path) -> String {
    let root = cache.join(pmem_lab_env::SNAPSHOTS_DIR);
    let mut sizes: Vec<u64> = std::fs::read_dir(&root)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|generation| {
            std::fs::read_dir(generation.path())
                .into_iter()
                .flatten()
                .flatten()
        })
        .filter(|e| e.path().join("state").is_file())
        .map(|e| pmem_lab_env::disk_usage(&e.path()))
        .collect();
    if sizes.is_empty() {
        return format!("none in {}", root.display());
    }
    sizes.sort();
    let mb = |b: u64| b as f64 / 1e6;
    format!(
        "{} in {}: median {:.0} MB ({:.0}..{:.0}), {:.1} GB in all",
        sizes.len(),
        root.display(),
        mb(sizes[sizes.len() / 2]),
        mb(sizes[0]),
        mb(sizes[sizes.len() - 1]),
        sizes.iter().sum::<u64>() as f64 / 1e9
    )
}

/// The suite (VM snapshots restored) with the poison model on by default
/// and with PMEM_LAB_POISON_DEFAULT=off (only the cases that set
/// `machine.poison: true` keep it), alternating, and the ratio of medians.
fn poison_suite(opts: &Options, runs: usize) -> Result<Rows> {
    let (mut on, mut off) = (Vec::new(), Vec::new());
    // One run first, unmeasured: it saves the snapshots the cache lacks.
    suite(opts)?;
    for _ in 0..runs {
        for (times, value) in [(&mut on, "on"), (&mut off, "off")] {
            let t = Instant::now();
            suite_with(opts, vec![(vars::POISON_DEFAULT.name, value.to_string())])?;
            times.push(t.elapsed());
        }
    }
    Ok(vec![
        (
            "whole suite, snapshots, poison on (default)".into(),
            stats(&on),
        ),
        (
            "whole suite, snapshots, poison default off".into(),
            stats(&off),
        ),
        (
            "ratio poison on / off (medians)".into(),
            format!("{:.2}x", ratio(&on, &off)),
        ),
    ])
}

/// Run the whole suite; its case events.
fn suite(opts: &Options) -> Result<Vec<CaseEvent>> {
    suite_with(opts, Vec::new())
}

fn suite_with(opts: &Options, extra: Vec<(&'static str, String)>) -> Result<Vec<CaseEvent>> {
    let run = lab::harness_run_with(opts, &[], extra)?;
    let failed: Vec<&str> = run
        .cases
        .iter()
        .filter(|e| e.status == Status::Failed)
        .map(|e| e.case.as_str())
        .collect();
    if run.success && failed.is_empty() && !run.cases.is_empty() {
        Ok(run.cases)
    } else {
        Err(Error::new(format!(
            "the suite failed during the benchmark (failed: {}):\n{}",
            failed.join(", "),
            run.output
        )))
    }
}
