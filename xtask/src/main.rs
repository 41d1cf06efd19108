//! `cargo xtask`: the lab's command line. The grammar is declared in
//! [`cli`]; each verb is a thin call into a module; see docs/architecture.md.

mod accel;
mod bench;
mod binaries;
mod bisect;
mod bisect_test;
mod cli;
mod deps;
mod equivalence;
mod image;
mod kconfig;
mod kernel;
mod kernels;
mod lab;
mod memo;
mod parity;
mod progress;
mod util;
mod validated;

use clap::Parser;
use cli::{Cli, Command, LabCommand};
use pmem_lab_env::vars;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Options shared by every command, with defaults applied.
#[derive(Clone)]
pub struct Options {
    pub workspace: PathBuf,
    pub cache: PathBuf,
    pub artifacts: PathBuf,
    /// The kernels to build and run, in order (at least one).
    pub kernels: Vec<kernel::KernelSpec>,
    pub jobs: usize,
    /// VMs in parallel (the test runner's threads); None: its default.
    pub vms: Option<usize>,
    /// `--qemu`, else PMEM_LAB_QEMU.
    pub qemu: Option<PathBuf>,
    /// `--cold`: no VM snapshots (PMEM_LAB_COLD=1 for the harness).
    pub cold: bool,
}

impl Options {
    /// The one kernel of a command that runs one (all but `lab`).
    pub fn kernel(&self) -> util::Result<&kernel::KernelSpec> {
        match &self.kernels[..] {
            [one] => Ok(one),
            _ => Err(util::Error::new(
                "this command works on one kernel: name one with --kernel (`cargo xtask lab` takes several)",
            )),
        }
    }

    /// The same options for one of the kernels: its own artifacts folder
    /// when the run has several.
    pub fn for_kernel(&self, k: &kernel::KernelSpec) -> Options {
        let mut o = self.clone();
        if self.kernels.len() > 1 {
            o.artifacts = self.artifacts.join(k.label());
        }
        o.kernels = vec![k.clone()];
        o
    }

    /// What the host checks need to know (see [`deps::Host`]).
    pub fn host(&self) -> deps::Host {
        deps::Host {
            qemu: self.qemu.clone(),
            cache: self.cache.clone(),
        }
    }
}

fn main() -> ExitCode {
    // Help and version go to stdout with status 0; usage errors to stderr
    // with status 2 (clap's convention), before any work.
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> util::Result<()> {
    let opts = options(cli.global)?;
    match cli.command {
        Command::Lab {
            shell: Some(LabCommand::Shell { case, put }),
            ..
        } => lab::shell(&opts, &case, &put),
        Command::Lab {
            shell: None,
            filter,
            runner_args,
            equivalence: false,
        } => lab::run(&opts, filter.as_deref(), &runner_args),
        Command::Lab {
            shell: None,
            filter,
            runner_args,
            equivalence: true,
        } => equivalence::run(&opts, filter.as_deref(), &runner_args),
        Command::Kernel => {
            for k in &opts.kernels {
                let k = lab::build_kernel(&opts.for_kernel(k))?;
                println!("{}", k.bzimage.display());
            }
            Ok(())
        }
        Command::Image => {
            let built = lab::build(&opts)?;
            println!("{}", built.initrd.display());
            Ok(())
        }
        Command::Deps { qemu_backports } => {
            let sources: Vec<_> = opts.kernels.iter().filter_map(|k| k.debian()).collect();
            deps::ensure(&opts.host(), &sources)?;
            if qemu_backports {
                println!("{}", deps::backports::fetch(&opts.cache)?.display());
            }
            Ok(())
        }
        Command::Env => {
            // For running the harness by hand or under cargo-nextest:
            // eval "$(cargo xtask env)"
            for (k, v) in lab::vm_env(&opts)? {
                println!("export {k}={}", pmem_lab_env::shell_quote(&v));
            }
            Ok(())
        }
        Command::Bisect {
            case,
            good,
            bad,
            repeat,
        } => run_bisect(&opts, case, good, bad, repeat),
        Command::BisectTest { repeat } => bisect_test::run(&opts, repeat),
        Command::Bench {
            runs,
            suite_runs,
            poison_suite_runs,
            cold,
        } => bench::run(
            &opts,
            &bench::BenchOptions {
                runs: runs.into(),
                suite_runs: suite_runs.into(),
                poison_suite_runs: poison_suite_runs.unwrap_or(suite_runs).into(),
                cold,
            },
        ),
    }
}

/// The run's options from the command line and the environment.
fn options(g: cli::Global) -> util::Result<Options> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf();
    let kernels = g.kernels()?;
    Ok(Options {
        artifacts: vars::ARTIFACTS
            .get()
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace.join("target/pmem-lab/artifacts")),
        workspace,
        cache: g.cache.unwrap_or_else(pmem_lab_env::default_cache),
        kernels,
        jobs: g.jobs.map_or_else(util::nproc, usize::from),
        cold: g.cold || vars::COLD.is_on(),
        vms: g.vms.map(usize::from),
        qemu: g.qemu.or_else(|| vars::QEMU.get().map(PathBuf::from)),
    })
}

/// `bisect`: the one kernel tree given, bisected; an error unless git
/// named a single first bad commit.
fn run_bisect(
    opts: &Options,
    case: String,
    good: String,
    bad: String,
    repeat: u32,
) -> util::Result<()> {
    let tree = match opts.kernels.as_slice() {
        [kernel::KernelSpec::Tree(t)] => t.clone(),
        _ => {
            return Err(util::Error::new(
                "bisect needs the git tree to bisect: --kernel-tree DIR",
            ))
        }
    };
    let b = bisect::BisectOptions {
        case,
        tree,
        good,
        bad,
        repeat,
    };
    match bisect::run(opts, &b)?.first {
        Some(_) => Ok(()),
        None => Err(util::Error::new("no single first bad commit (above)")),
    }
}
