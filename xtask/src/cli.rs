//! The command line, declared (clap derive). Every value is checked here, at
//! parse time, before any package, kernel or VM work starts: a bad `--jobs`
//! or a missing `--kernel-tree` is an error in milliseconds, not after a
//! ten-minute build.

use crate::kernel::KernelSpec;
use clap::{Args, Parser, Subcommand};
use pmem_lab_env::put::PutArg;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "pmem-lab: a QEMU lab for Linux persistent-memory error handling",
    after_help = "Environment: see docs/architecture.md (PMEM_LAB_*). Docs: docs/."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub global: Global,
}

/// Options every command accepts.
#[derive(Debug, Args)]
pub struct Global {
    /// The kernel to build and run: `debian-6.12` (the default),
    /// `debian-6.1` (Debian's linux-source packages) or a tree's DIR (built
    /// out of tree, O=; never written to). Repeat it to run the cases on
    /// each, with one report that has a column per kernel.
    #[arg(long, global = true, value_name = "KERNEL", value_parser = kernel_spec)]
    pub kernel: Vec<KernelSpec>,
    /// Build this kernel tree (out of tree, O=) instead of Debian's
    /// linux-source-6.12; your tree is never written to. Same as
    /// `--kernel DIR`.
    #[arg(long, global = true, value_name = "DIR", value_parser = kernel_tree)]
    pub kernel_tree: Option<PathBuf>,
    /// Build cache [default: $PMEM_LAB_CACHE, else $XDG_CACHE_HOME/pmem-lab,
    /// else ~/.cache/pmem-lab].
    #[arg(long, global = true, value_name = "DIR", value_parser = cache_dir)]
    pub cache: Option<PathBuf>,
    /// Parallel make jobs [default: number of CPUs].
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub jobs: Option<u16>,
    /// VMs run in parallel [default: number of CPUs].
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub vms: Option<u16>,
    /// The qemu-system-x86_64 to run [default: $PMEM_LAB_QEMU, else PATH,
    /// else the lab's private copy].
    #[arg(long, global = true, value_name = "PATH", value_parser = qemu_binary)]
    pub qemu: Option<PathBuf>,
    /// Boot every case's VM cold: no VM snapshot is saved or restored
    /// (docs/performance.md) [default: $PMEM_LAB_COLD=1].
    #[arg(long, global = true)]
    pub cold: bool,
}

impl Global {
    /// The kernels to run, in order: `--kernel`s then `--kernel-tree`, the
    /// default when none is named; one named twice is refused (it would
    /// run the whole selection twice under one name).
    pub fn kernels(&self) -> Result<Vec<KernelSpec>, crate::util::Error> {
        let mut k = self.kernel.clone();
        k.extend(self.kernel_tree.clone().map(KernelSpec::Tree));
        for (i, a) in k.iter().enumerate() {
            if k[..i].contains(a) {
                return Err(crate::util::Error::new(format!(
                    "--kernel {} is named twice: name each kernel once",
                    a.label()
                )));
            }
        }
        if k.is_empty() {
            k.push(KernelSpec::Debian(crate::deps::DebianKernel::V6_12));
        }
        Ok(k)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build what is missing, then run the cases whose name contains a
    /// FILTER (all by default).
    #[command(args_conflicts_with_subcommands = true)]
    Lab {
        #[command(subcommand)]
        shell: Option<LabCommand>,
        /// Run only the cases whose name contains this (e.g. `devdax`,
        /// `clear/`); the test runner takes one filter.
        #[arg(value_name = "FILTER")]
        filter: Option<String>,
        /// Arguments for the test runner after `--` (e.g. --list, --exact).
        #[arg(last = true, value_name = "ARGS")]
        runner_args: Vec<String>,
        /// Run the selection twice, cold and with VM snapshots, and compare
        /// each case's first oracle observation between the two
        /// (report/equivalence.md); fails on any difference or failure.
        #[arg(long)]
        equivalence: bool,
    },
    /// Build (or reuse) the guest kernel.
    Kernel,
    /// Build (or reuse) kernel + guest initramfs.
    Image,
    /// Check host packages; install them if root on Debian (never removing
    /// or downgrading one).
    Deps {
        /// Also fetch QEMU from your Debian release's backports suite into
        /// the lab's cache (a private apt configuration; the system's is
        /// never written) and print its path, for `--qemu`.
        #[arg(long)]
        qemu_backports: bool,
    },
    /// Build what VMs need and print the environment the harness reads, for
    /// `eval` in a shell.
    Env,
    /// Find the commit that broke a case: git bisect between GOOD and BAD
    /// in a private clone of --kernel-tree (your tree is never written),
    /// each commit built incrementally and judged by the case's failure
    /// class at BAD. docs/bisecting.md.
    Bisect {
        /// A case id as `cargo xtask lab -- --list` shows it.
        case: String,
        /// A revision where the case passes.
        #[arg(long, value_name = "REV")]
        good: String,
        /// A revision where the case fails.
        #[arg(long, value_name = "REV")]
        bad: String,
        /// Runs per commit at most (a flaky case: more).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=50))]
        repeat: u32,
    },
    /// Test the bisect: a git history made from Debian's 6.12 source with a
    /// planted break (and a flaky one) must be bisected to the planted
    /// commits. Prints how long each bisection took.
    BisectTest {
        /// Runs per commit for the flaky bisection.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(2..=50))]
        repeat: u32,
    },
    /// Medians of build, boot and case times.
    Bench {
        /// Runs per figure.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=100))]
        runs: u16,
        /// Runs of the whole suite restored from VM snapshots, at the
        /// default VMs and at one per core (0: skip the suite; it also runs
        /// once cold and once saving snapshots).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(0..=20))]
        suite_runs: u16,
        /// Runs of the suite (snapshots restored) with the poison model on
        /// by default and with PMEM_LAB_POISON_DEFAULT=off, alternating
        /// (0: skip) [default: --suite-runs].
        #[arg(long, value_parser = clap::value_parser!(u16).range(0..=20))]
        poison_suite_runs: Option<u16>,
        /// Rebuild the kernel from scratch first.
        #[arg(long)]
        cold: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Boot CASE's machine, run its setup, and open a shell on the guest's
    /// serial console (Ctrl-C goes to the guest; `exit` ends the VM).
    Shell {
        /// A case id as `cargo xtask lab -- --list` shows it.
        case: String,
        /// Also put this host file at this guest path after setup (a C
        /// source is compiled statically first); repeatable.
        #[arg(long = "put", value_name = "HOST:GUEST", value_parser = PutArg::parse)]
        put: Vec<PutArg>,
    },
}

/// `debian-6.12`, `debian-6.1`, or a kernel tree's directory.
fn kernel_spec(s: &str) -> Result<KernelSpec, String> {
    if s.starts_with("debian-") {
        KernelSpec::debian_named(s).map_err(|e| e.to_string())
    } else {
        kernel_tree(s).map(KernelSpec::Tree)
    }
}

fn kernel_tree(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    if !p.is_dir() {
        return Err(format!("{s} is not a directory: name a Linux source tree"));
    }
    if !p.join("Makefile").is_file() || !p.join("Kconfig").is_file() {
        return Err(format!(
            "{s} has no Makefile and Kconfig: it does not look like a Linux source tree"
        ));
    }
    p.canonicalize().map_err(|e| format!("{s}: {e}"))
}

fn cache_dir(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    if s.is_empty() {
        return Err("the cache needs a path".into());
    }
    if p.exists() && !p.is_dir() {
        return Err(format!("{s} exists and is not a directory"));
    }
    // The first existing ancestor must be a directory we can write into.
    let mut probe = p.as_path();
    while !probe.exists() {
        match probe.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => probe = parent,
            _ => break,
        }
    }
    if probe.exists() && probe.metadata().is_ok_and(|m| m.permissions().readonly()) {
        return Err(format!("{} is read-only", probe.display()));
    }
    Ok(std::path::absolute(&p).unwrap_or(p))
}

fn qemu_binary(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    if !p.is_file() {
        return Err(format!(
            "{s} is not a file: name a qemu-system-x86_64 binary"
        ));
    }
    let p = std::path::absolute(&p).unwrap_or(p);
    // Run once here, so `--qemu /bin/true` fails before any work.
    pmem_lab_env::qemu::Qemu::at(p.clone())
        .check()
        .map_err(|e| e.to_string())?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("cargo xtask").chain(args.iter().copied()))
    }

    #[test]
    fn the_grammar_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn zero_jobs_and_vms_are_refused_at_parse_time() {
        for bad in [
            &["lab", "--vms", "0"][..],
            &["lab", "--jobs", "0"],
            &["kernel", "--jobs", "x"],
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(
                e.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn negative_counts_are_not_values() {
        assert!(parse(&["lab", "--vms", "-1"]).is_err());
    }

    #[test]
    fn paths_are_checked_at_parse_time() {
        let e = parse(&["lab", "--kernel-tree", "/nonexistent/linux"]).unwrap_err();
        assert!(e.to_string().contains("is not a directory"), "{e}");
        let e = parse(&["lab", "--kernel-tree", "/"]).unwrap_err();
        assert!(
            e.to_string()
                .contains("does not look like a Linux source tree"),
            "{e}"
        );
        let e = parse(&["lab", "--cache", "/proc/version"]).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        let e = parse(&["lab", "--qemu", "/nonexistent/qemu"]).unwrap_err();
        assert!(e.to_string().contains("is not a file"), "{e}");
    }

    #[test]
    fn kernels_are_debian_names_or_trees_and_repeat() {
        let cli = parse(&["lab", "--kernel", "debian-6.1", "--kernel", "debian-6.12"]).unwrap();
        assert_eq!(
            cli.global.kernel,
            [
                KernelSpec::Debian(crate::deps::DebianKernel::V6_1),
                KernelSpec::Debian(crate::deps::DebianKernel::V6_12)
            ]
        );
        let e = parse(&["lab", "--kernel", "debian-5.10"]).unwrap_err();
        assert!(
            e.to_string()
                .contains("Debian packages the kernels debian-6.12, debian-6.1"),
            "{e}"
        );
        let e = parse(&["lab", "--kernel", "/"]).unwrap_err();
        assert!(
            e.to_string()
                .contains("does not look like a Linux source tree"),
            "{e}"
        );
    }

    #[test]
    fn a_kernel_named_twice_is_refused() {
        let twice = parse(&["lab", "--kernel", "debian-6.12", "--kernel", "debian-6.12"]).unwrap();
        let e = twice.global.kernels().unwrap_err().to_string();
        assert!(e.contains("named twice"), "{e}");
        let one = parse(&["lab"]).unwrap();
        assert_eq!(
            one.global.kernels().unwrap(),
            [KernelSpec::Debian(crate::deps::DebianKernel::V6_12)]
        );
    }

    #[test]
    fn a_qemu_that_is_not_one_is_refused_at_parse_time() {
        let e = parse(&["lab", "--qemu", "/bin/true"]).unwrap_err();
        assert!(e.to_string().contains("is not a QEMU"), "{e}");
    }

    #[test]
    fn lab_takes_filters_runner_args_or_shell() {
        let cli = parse(&["lab", "devdax", "--vms", "2", "--", "--list"]).unwrap();
        let Command::Lab {
            shell: None,
            filter,
            runner_args,
            equivalence: false,
        } = cli.command
        else {
            panic!("lab")
        };
        assert_eq!(filter.as_deref(), Some("devdax"));
        assert!(parse(&["lab", "devdax", "clear/"]).is_err());
        assert_eq!(runner_args, ["--list"]);
        assert_eq!(cli.global.vms, Some(2));
        let cli = parse(&["lab", "--equivalence", "clear/"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Lab {
                equivalence: true,
                ..
            }
        ));
        let cli = parse(&["lab", "shell", "namespaces/devdax-2m"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Lab { shell: Some(LabCommand::Shell { ref case, .. }), .. } if case == "namespaces/devdax-2m"
        ));
        let cli = parse(&["lab", "shell", "x", "--put", "/etc/hostname:/tmp/v"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Lab { shell: Some(LabCommand::Shell { ref put, .. }), .. } if put.iter().map(PutArg::to_string).eq(["/etc/hostname:/tmp/v"])
        ));
        assert!(parse(&["lab", "shell", "x", "--put", "/nonexistent:/tmp/v"]).is_err());
        assert!(parse(&["lab", "shell", "x", "--put", "/proc/version:relative"]).is_err());
        assert!(parse(&["lab", "shell"]).is_err());
    }

    #[test]
    fn help_is_a_display_not_an_error() {
        let e = parse(&["--help"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp);
        // clap prints DisplayHelp to stdout and exits 0.
        assert_eq!(e.exit_code(), 0);
    }
}
