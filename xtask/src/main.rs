//! `cargo xtask`: the lab's command line. The grammar is declared in
//! [`cli`]; each verb is a thin call into a module; see docs/architecture.md.

mod accel;
mod bench;
mod cli;
mod deps;
mod image;
mod kconfig;
mod kernel;
mod lab;
mod parity;
mod progress;
mod util;

use clap::Parser;
use cli::{Cli, Command, LabCommand};
use pmem_lab_env::vars;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Options shared by every command, with defaults applied.
pub struct Options {
    pub workspace: PathBuf,
    pub cache: PathBuf,
    pub artifacts: PathBuf,
    pub kernel_tree: Option<PathBuf>,
    pub jobs: usize,
    /// VMs in parallel (the test runner's threads); None: its default.
    pub vms: Option<usize>,
    /// `--qemu`, else PMEM_LAB_QEMU.
    pub qemu: Option<PathBuf>,
}

impl Options {
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
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf();
    let g = cli.global;
    let opts = Options {
        artifacts: vars::ARTIFACTS
            .get()
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace.join("target/pmem-lab/artifacts")),
        workspace,
        cache: g.cache.unwrap_or_else(pmem_lab_env::default_cache),
        kernel_tree: g.kernel_tree,
        jobs: g.jobs.map_or_else(util::nproc, usize::from),
        vms: g.vms.map(usize::from),
        qemu: g.qemu.or_else(|| vars::QEMU.get().map(PathBuf::from)),
    };
    match cli.command {
        Command::Lab {
            shell: Some(LabCommand::Shell { case, put }),
            ..
        } => lab::shell(&opts, &case, &put),
        Command::Lab {
            shell: None,
            filter,
            runner_args,
        } => lab::run(&opts, filter.as_deref(), &runner_args),
        Command::Kernel => {
            let k = lab::build_kernel(&opts)?;
            println!("{}", k.bzimage.display());
            Ok(())
        }
        Command::Image => {
            let built = lab::build(&opts)?;
            println!("{}", built.initrd.display());
            Ok(())
        }
        Command::Deps { qemu_backports } => {
            deps::ensure(&opts.host(), true)?;
            if qemu_backports {
                println!("{}", deps::backports::fetch(&opts.cache)?.display());
            }
            Ok(())
        }
        Command::Env => {
            // For running the harness by hand or under cargo-nextest:
            // eval "$(cargo xtask env)"
            for (k, v) in lab::vm_env(&opts)? {
                println!("export {k}='{}'", v.replace('\'', r"'\''"));
            }
            Ok(())
        }
        Command::Bench {
            runs,
            suite_runs,
            cold,
        } => bench::run(
            &opts,
            &bench::BenchOptions {
                runs: runs.into(),
                suite_runs: suite_runs.into(),
                cold,
            },
        ),
    }
}
