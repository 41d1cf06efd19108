//! `cargo xtask`: the lab's command line. Each verb is a thin call into a
//! module; see docs/architecture.md.

mod accel;
mod bench;
mod deps;
mod image;
mod kconfig;
mod kernel;
mod lab;
mod progress;
mod util;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  lab [FILTER...] [-- ARGS]  build what is missing, then run the cases whose
                             name contains a FILTER (all by default); ARGS go
                             to the test runner (e.g. --list, --exact)
  lab shell CASE             boot CASE's machine, run its setup, and open a
                             shell on the guest's serial console (Ctrl-C
                             goes to the guest; `exit` ends the VM)
  kernel                     build (or reuse) the guest kernel
  image                      build (or reuse) kernel + guest initramfs
  deps                       check host packages, install them if root on Debian
  env                        build what VMs need and print the environment the
                             harness reads, for eval in a shell
  bench [runs N] [suite-runs N] [cold]
                             medians of build, boot and case times (cold:
                             rebuild the kernel from scratch first)

options:
  --kernel-tree PATH   build this kernel tree (out of tree, O=) instead of
                       Debian's linux-source-6.12
  --cache DIR          build cache (default $PMEM_LAB_CACHE, else
                       $XDG_CACHE_HOME/pmem-lab, else ~/.cache/pmem-lab)
  --jobs N             parallel make jobs (default: number of CPUs)
  --vms N              VMs run in parallel (default: number of CPUs)
";

/// Options shared by every command.
pub struct Options {
    pub workspace: PathBuf,
    pub cache: PathBuf,
    pub artifacts: PathBuf,
    pub kernel_tree: Option<PathBuf>,
    pub jobs: usize,
}

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> util::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(command) = args.next() else {
        eprint!("{USAGE}");
        return Err(util::Error::new("no command given"));
    };
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf();
    let mut opts = Options {
        artifacts: std::env::var_os("PMEM_LAB_ARTIFACTS")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace.join("target/pmem-lab/artifacts")),
        workspace,
        cache: default_cache(),
        kernel_tree: None,
        jobs: util::nproc(),
    };
    let mut positional = Vec::new();
    let mut passthrough = Vec::new();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| util::Error::new(format!("{name} needs a value")))
        };
        match arg.as_str() {
            "--kernel-tree" => opts.kernel_tree = Some(PathBuf::from(value("--kernel-tree")?)),
            "--cache" => opts.cache = PathBuf::from(value("--cache")?),
            "--vms" => {
                let n: usize = value("--vms")?
                    .parse()
                    .map_err(|_| util::Error::new("--vms takes a number"))?;
                passthrough.push(format!("--test-threads={n}"));
            }
            "--jobs" => {
                opts.jobs = value("--jobs")?
                    .parse()
                    .map_err(|_| util::Error::new("--jobs takes a number"))?
            }
            "-h" | "--help" => {
                eprint!("{USAGE}");
                return Ok(());
            }
            "--" => {
                passthrough.extend(args.by_ref());
            }
            flag if flag.starts_with("--") => {
                return Err(util::Error::new(format!(
                    "unknown option {flag}; see `cargo xtask --help`"
                )))
            }
            _ => positional.push(arg),
        }
    }
    match command.as_str() {
        "lab" if positional.first().is_some_and(|p| p == "shell") => match positional.get(1) {
            Some(case) => lab::shell(&opts, case),
            None => Err(util::Error::new("usage: cargo xtask lab shell CASE")),
        },
        "lab" => lab::run(&opts, &positional, &passthrough),
        "kernel" => {
            deps::ensure(opts.kernel_tree.is_none())?;
            let src = kernel::source(opts.kernel_tree.as_deref(), &opts.cache)?;
            let k = kernel::ensure(
                &src,
                &lab::fragments(&opts.workspace)?,
                &opts.cache,
                opts.jobs,
            )?;
            println!("{}", k.bzimage.display());
            Ok(())
        }
        "image" => {
            let built = lab::build(&opts)?;
            println!("{}", built.initrd.display());
            Ok(())
        }
        "deps" => deps::ensure(true),
        "env" => {
            // For running the harness by hand or under cargo-nextest:
            // eval "$(cargo xtask env)"
            for (k, v) in lab::vm_env(&opts)? {
                println!("export {k}='{}'", v.replace('\'', r"'\''"));
            }
            Ok(())
        }
        "bench" => {
            let mut b = bench::BenchOptions {
                runs: 5,
                suite_runs: 1,
                cold: false,
            };
            let mut words = positional.iter();
            while let Some(w) = words.next() {
                let mut num = |name: &str| -> util::Result<usize> {
                    words
                        .next()
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| util::Error::new(format!("{name} takes a number")))
                };
                match w.as_str() {
                    "runs" => b.runs = num("runs")?,
                    "suite-runs" => b.suite_runs = num("suite-runs")?,
                    "cold" => b.cold = true,
                    other => {
                        return Err(util::Error::new(format!(
                            "bench: unknown word `{other}` (runs N, suite-runs N, cold)"
                        )))
                    }
                }
            }
            bench::run(&opts, &b)
        }
        "help" | "-h" | "--help" => {
            eprint!("{USAGE}");
            Ok(())
        }
        other => Err(util::Error::new(format!(
            "unknown command `{other}`; see `cargo xtask --help`"
        ))),
    }
}

fn default_cache() -> PathBuf {
    if let Some(dir) = std::env::var_os("PMEM_LAB_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(xdg).join("pmem-lab");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".cache/pmem-lab")
}
