//! A C source a case brings, compiled on the host for the guest: statically,
//! in a sandbox, within bounds, cached by everything it can read.
//!
//! A case file is code someone may hand to a CI job, so its compile must not
//! read the host: `#include "/etc/shadow"` would print the file's lines in
//! gcc's message and `.incbin` would copy any file into the program that goes
//! to the guest. gcc's own options cannot close every path (`#include`,
//! `.incbin`, `.include`, `-include`, specs, `@file`, the environment), so
//! the compile runs in bubblewrap (`bwrap`, Debian's bubblewrap, the sandbox
//! Flatpak uses): it sees the source's folder read-only at /case and the
//! system's compiler, headers and libraries read-only, with a private /tmp
//! and /dev, no /proc, no network and a clean environment. Bounds (time,
//! address space, file size, message size, program size) come from
//! [`Bounds`]; the error names the one that was hit.

use sha2::{Digest, Sha256};
use std::fmt;
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Static, so the guest needs nothing but the program; warnings shown.
pub const FLAGS: [&str; 3] = ["-static", "-O2", "-Wall"];

/// What the compile sees of the host besides the source's folder, read-only:
/// the compiler, its helpers, the headers and the libraries; not /usr/local,
/// /usr/share, /etc, /home, /root or /tmp.
const SYSTEM: [&str; 5] = [
    "/usr/bin",
    "/usr/lib",
    "/usr/lib64",
    "/usr/libexec",
    "/usr/include",
];

/// How much a compile may take.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub time: Duration,
    /// Address space of every process of the compile (RLIMIT_AS).
    pub memory: u64,
    /// Any one file it writes (RLIMIT_FSIZE).
    pub file: u64,
    /// gcc's messages kept for the error.
    pub message: usize,
    /// The program, as a `put` file crosses the agent's channel.
    pub program: u64,
    /// Everything under the source's folder, read for the cache key.
    pub folder: u64,
}

impl Bounds {
    pub const DEFAULT: Bounds = Bounds {
        time: Duration::from_secs(60),
        memory: 2 << 30,
        file: 64 << 20,
        message: 16 << 10,
        program: pmem_lab_proto::MAX_PUT_BYTES,
        folder: 64 << 20,
    };
}

/// Why a source gave no program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompileError {
    /// gcc or bwrap is not on this machine.
    Missing {
        tool: &'static str,
        package: &'static str,
    },
    /// bwrap could not make the sandbox (its own words).
    Sandbox(String),
    /// The source's folder cannot be read for the key, or is too large.
    Folder(String),
    /// gcc refused the source: its messages, cut to the bound.
    Refused {
        source: String,
        messages: String,
    },
    Time(Duration),
    Memory(u64),
    File(u64),
    Program {
        bytes: u64,
        bound: u64,
    },
    /// The cache cannot be written.
    Cache(String),
}

impl std::error::Error for CompileError {}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CompileError::Missing { tool, package } => write!(
                f,
                "cannot compile a case's C source: no `{tool}` on this machine \
                 (`cargo xtask deps` installs it, or apt-get install {package})"
            ),
            CompileError::Sandbox(why) => write!(
                f,
                "bwrap could not make the compile's sandbox: {why} (user namespaces \
                 disabled? run as root or allow them: sysctl kernel.unprivileged_userns_clone=1)"
            ),
            CompileError::Folder(why) => write!(f, "{why}"),
            CompileError::Refused { source, messages } => write!(
                f,
                "`{source}` does not compile (gcc {}, in a sandbox that sees only the \
                 source's folder as /case and the system's headers):\n{messages}",
                FLAGS.join(" ")
            ),
            CompileError::Time(t) => write!(
                f,
                "the compile ran past its time bound of {} s and was stopped \
                 (an #include of a FIFO or a device, or a source too large?)",
                t.as_secs()
            ),
            CompileError::Memory(b) => write!(
                f,
                "the compile ran out of its memory bound of {} MiB (an #include of \
                 /dev/zero or a macro bomb?)",
                b >> 20
            ),
            CompileError::File(b) => write!(
                f,
                "the compile wrote a file past its bound of {} MiB",
                b >> 20
            ),
            CompileError::Program { bytes, bound } => write!(
                f,
                "the program has {bytes} bytes; a program for the guest has at most {} MiB \
                 (it crosses the agent's channel like a put file)",
                bound >> 20
            ),
            CompileError::Cache(why) => write!(f, "the compile cache: {why}"),
        }
    }
}

/// `source` (inside `folder`) compiled, cached under `<cache>/bring/`.
pub fn compile(
    source: &Path,
    folder: &Path,
    cache: &Path,
    bounds: Bounds,
) -> Result<PathBuf, CompileError> {
    let gcc = gcc_identity()?;
    let bwrap = which("bwrap", "bubblewrap")?;
    let prlimit = which("prlimit", "util-linux")?;
    // The sandbox sees the source's own folder: the narrowest that holds
    // what it may include (its headers, files beside it).
    let dir = source.parent().unwrap_or(folder);
    if !dir.starts_with(folder) {
        return Err(CompileError::Folder(format!(
            "`{}` is outside the case's folder {}",
            source.display(),
            folder.display()
        )));
    }
    let name = source
        .file_name()
        .ok_or_else(|| CompileError::Folder(format!("`{}` names no file", source.display())))?;
    let key = key(dir, name.as_encoded_bytes(), gcc, bounds.folder)?;
    let store = cache.join("bring");
    let out = store.join(&key).join("program");
    if out.is_file() {
        return Ok(out);
    }
    // Trials compile in parallel threads of one process: the work folder
    // names both.
    let work = store.join(format!(
        ".work-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)
        .map_err(|e| CompileError::Cache(format!("{}: {e}", work.display())))?;
    let result = Sandbox {
        bwrap: &bwrap,
        prlimit: &prlimit,
        dir,
        name,
        work: &work,
        bounds,
    }
    .run();
    let published = result.and_then(|()| {
        let program = work.join("program");
        let bytes = fs::metadata(&program)
            .map_err(|e| CompileError::Cache(format!("{}: {e}", program.display())))?
            .len();
        if bytes > bounds.program {
            return Err(CompileError::Program {
                bytes,
                bound: bounds.program,
            });
        }
        let final_dir = store.join(&key);
        fs::create_dir_all(&final_dir)
            .and_then(|()| fs::rename(&program, &out))
            .map_err(|e| CompileError::Cache(format!("{}: {e}", out.display())))
    });
    let _ = fs::remove_dir_all(&work);
    published.map(|()| out)
}

/// One compile: gcc in bwrap under prlimit's bounds, of the source `name`
/// in the case folder `dir`; the program at `work/program`.
struct Sandbox<'a> {
    bwrap: &'a Path,
    prlimit: &'a Path,
    dir: &'a Path,
    name: &'a std::ffi::OsStr,
    work: &'a Path,
    bounds: Bounds,
}

impl Sandbox<'_> {
    fn run(&self) -> Result<(), CompileError> {
        let (prlimit, name, bounds) = (self.prlimit, self.name, self.bounds);
        let mut child = self.command().spawn().map_err(|e| {
            CompileError::Sandbox(format!("cannot start {}: {e}", prlimit.display()))
        })?;
        let reader = bounded_reader(child.stderr.take().expect("piped"), bounds.message);
        let start = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if start.elapsed() > bounds.time => {
                    // bwrap's pid 1 takes the whole namespace with it.
                    let _ = child.kill();
                    let _ = child.wait();
                    let _ = reader.join();
                    return Err(CompileError::Time(bounds.time));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => {
                    return Err(CompileError::Sandbox(format!(
                        "waiting for the compile: {e}"
                    )))
                }
            }
        };
        let (kept, more) = reader.join().unwrap_or_default();
        if status.success() {
            return Ok(());
        }
        Err(why_failed(status, &kept, more, name, bounds))
    }

    /// The compile's command: prlimit's bounds around bwrap (no namespace
    /// shared, no capability, a clean environment; the system's compiler,
    /// headers and libraries and the case folder read-only, `work` at /out)
    /// around gcc.
    fn command(&self) -> Command {
        let Sandbox {
            bwrap,
            prlimit,
            dir,
            name,
            work,
            bounds,
        } = *self;
        let mut cmd = Command::new(prlimit);
        cmd.arg(format!("--as={}", bounds.memory))
            .arg(format!("--fsize={}", bounds.file))
            .arg("--")
            .arg(bwrap)
            .args(["--unshare-all", "--die-with-parent", "--new-session"])
            .args(["--cap-drop", "ALL", "--clearenv"])
            .args(["--setenv", "PATH", "/usr/bin"])
            .args(["--setenv", "LC_ALL", "C"])
            .args(["--setenv", "TMPDIR", "/tmp"]);
        for sys in SYSTEM.iter().filter(|d| Path::new(d).is_dir()) {
            cmd.args(["--ro-bind", sys, sys]);
        }
        // Merged /usr (Debian 12): the loader's path is /lib64/ld-linux...
        for (link, target) in [
            ("/bin", "usr/bin"),
            ("/lib", "usr/lib"),
            ("/lib64", "usr/lib64"),
        ] {
            cmd.args(["--symlink", target, link]);
        }
        if Path::new("/etc/ld.so.cache").is_file() {
            cmd.args(["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]);
        }
        cmd.args(["--tmpfs", "/tmp", "--dev", "/dev"])
            .arg("--ro-bind")
            .arg(dir)
            .arg("/case")
            .arg("--bind")
            .arg(work)
            .arg("/out")
            .args(["--chdir", "/case", "--", "gcc"])
            .args(FLAGS)
            .args(["-o", "/out/program"])
            // Under /case, so no name can read as an option.
            .arg(Path::new("/case").join(name))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    }
}

/// Read gcc's messages beside the wait: a flood of them must neither fill
/// the pipe (and stall gcc) nor the lab's memory. The thread gives the
/// first `keep` bytes and how many more there were.
fn bounded_reader(
    mut stderr: std::process::ChildStderr,
    keep: usize,
) -> std::thread::JoinHandle<(Vec<u8>, usize)> {
    std::thread::spawn(move || {
        let (mut kept, mut more, mut buf) = (Vec::new(), 0usize, [0u8; 8192]);
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            let room = keep.saturating_sub(kept.len()).min(n);
            kept.extend_from_slice(&buf[..room]);
            more += n - room;
        }
        (kept, more)
    })
}

/// Why a compile that ended with `status` failed: the sandbox, a bound, or
/// gcc's own messages (cut to what was kept).
fn why_failed(
    status: std::process::ExitStatus,
    kept: &[u8],
    more: usize,
    name: &std::ffi::OsStr,
    bounds: Bounds,
) -> CompileError {
    let mut messages = String::from_utf8_lossy(kept).trim_end().to_string();
    if messages.starts_with("bwrap:") {
        return CompileError::Sandbox(messages);
    }
    if messages.contains("memory exhausted")
        || messages.contains("out of memory")
        || messages.contains("Cannot allocate memory")
    {
        return CompileError::Memory(bounds.memory);
    }
    use std::os::unix::process::ExitStatusExt;
    if status.signal() == Some(libc::SIGXFSZ)
        || messages.contains("File too large")
        || messages.contains("signal 25")
    {
        return CompileError::File(bounds.file);
    }
    if more > 0 {
        messages.push_str(&format!(
            "\n... ({more} more bytes of gcc's messages not shown)"
        ));
    }
    CompileError::Refused {
        source: name.to_string_lossy().into_owned(),
        messages,
    }
}

/// The cache key: every input the sandbox lets the compile read. The
/// source's folder, whole (names, kinds and contents: an `.incbin` may read
/// any file there); the source's name; gcc's version and identity; the
/// flags; and dpkg's status (what the system's headers and libraries are).
fn key(dir: &Path, name: &[u8], gcc: &[u8], bound: u64) -> Result<String, CompileError> {
    let mut h = Sha256::new();
    h.update(b"compile-2\0");
    h.update(gcc);
    h.update(FLAGS.join(" ").as_bytes());
    h.update(b"\0");
    h.update(name);
    h.update(b"\0");
    let mut budget = bound;
    hash_tree(&mut h, dir, Path::new(""), 0, &mut budget)?;
    let dpkg = fs::metadata("/var/lib/dpkg/status")
        .map(|m| {
            format!(
                "{} {} {} {}",
                m.dev(),
                m.ino(),
                m.len(),
                m.mtime_nsec() as i128 + m.mtime() as i128 * 1_000_000_000
            )
        })
        .unwrap_or_default();
    h.update(dpkg.as_bytes());
    Ok(h.finalize()
        .iter()
        .take(10)
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Hash `root/rel`'s entries in name order. Symbolic links by their text
/// (the sandbox resolves them inside itself); FIFOs and devices by kind
/// only (reading one would block or never end; the sandbox's compile that
/// reads one is stopped by the time bound).
fn hash_tree(
    h: &mut Sha256,
    root: &Path,
    rel: &Path,
    depth: usize,
    budget: &mut u64,
) -> Result<(), CompileError> {
    let dir = root.join(rel);
    let folder = |e: std::io::Error| CompileError::Folder(format!("{}: {e}", dir.display()));
    if depth > 16 {
        return Err(CompileError::Folder(format!(
            "{}: folders nest more than 16 deep beside a C source",
            dir.display()
        )));
    }
    let mut entries: Vec<_> = fs::read_dir(&dir)
        .map_err(folder)?
        .collect::<Result<_, _>>()
        .map_err(folder)?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = rel.join(e.file_name());
        let meta = fs::symlink_metadata(e.path()).map_err(folder)?;
        h.update(path.as_os_str().as_encoded_bytes());
        h.update(b"\0");
        let t = meta.file_type();
        if t.is_symlink() {
            let target = fs::read_link(e.path()).map_err(folder)?;
            h.update(b"link\0");
            h.update(target.as_os_str().as_encoded_bytes());
        } else if t.is_dir() {
            h.update(b"dir\0");
            hash_tree(h, root, &path, depth + 1, budget)?;
        } else if t.is_file() {
            *budget = budget.checked_sub(meta.len()).ok_or_else(|| {
                CompileError::Folder(format!(
                    "the files beside the C source in {} pass {} MiB: keep the source in a \
                     folder of its own (all of it is the compile's input)",
                    root.display(),
                    Bounds::DEFAULT.folder >> 20
                ))
            })?;
            h.update(b"file\0");
            let mut f = fs::File::open(e.path()).map_err(folder)?;
            let mut buf = vec![0u8; 64 << 10];
            let mut left = meta.len();
            while left > 0 {
                let n = f.read(&mut buf).map_err(folder)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                left = left.saturating_sub(n as u64);
            }
        } else {
            h.update(b"special\0");
        }
        h.update(b"\0");
    }
    Ok(())
}

/// gcc's `--version` and its binary's identity, asked once per process.
fn gcc_identity() -> Result<&'static [u8], CompileError> {
    static GCC: OnceLock<Result<Vec<u8>, CompileError>> = OnceLock::new();
    GCC.get_or_init(|| {
        let path = which("gcc", "gcc")?;
        let out =
            Command::new(&path)
                .arg("--version")
                .output()
                .map_err(|_| CompileError::Missing {
                    tool: "gcc",
                    package: "gcc",
                })?;
        let mut id = out.stdout;
        if let Ok(m) = fs::metadata(&path) {
            id.extend(format!(" {} {} {}", m.ino(), m.len(), m.mtime()).bytes());
        }
        Ok(id)
    })
    .as_ref()
    .map(Vec::as_slice)
    .map_err(Clone::clone)
}

fn which(tool: &'static str, package: &'static str) -> Result<PathBuf, CompileError> {
    pmem_lab_env::program(tool).ok_or(CompileError::Missing { tool, package })
}

/// Whether this machine can compile a case's sources at all.
pub fn available() -> bool {
    ["gcc", "bwrap", "prlimit"]
        .iter()
        .all(|t| pmem_lab_env::program(t).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A case folder `case/` in a scratch folder, with `files`.
    fn folder(files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let case = dir.path().join("case");
        fs::create_dir(&case).unwrap();
        for (name, text) in files {
            fs::write(case.join(name), text).unwrap();
        }
        let case = case.canonicalize().unwrap();
        (dir, case)
    }

    fn build(case: &Path, name: &str, bounds: Bounds) -> Result<PathBuf, CompileError> {
        compile(
            &case.join(name),
            case,
            &case.parent().unwrap().join("cache"),
            bounds,
        )
    }

    /// On a machine without the tools the refusal is what is tested.
    fn tools_or_refusal(case: &Path) -> bool {
        if available() {
            return true;
        }
        let e = build(case, "main.c", Bounds::DEFAULT).unwrap_err();
        assert!(matches!(e, CompileError::Missing { .. }), "{e}");
        assert!(e.to_string().contains("apt-get install"), "{e}");
        false
    }

    const HELLO: &str = "#include <stdio.h>\nint main(void) { puts(\"hi\"); return 0; }\n";

    #[test]
    fn a_source_compiles_once_and_a_broken_one_says_why() {
        let (_d, case) = folder(&[
            ("main.c", HELLO),
            ("bad.c", "int main(void) { return nope; }\n"),
        ]);
        if !tools_or_refusal(&case) {
            return;
        }
        let out = build(&case, "main.c", Bounds::DEFAULT).unwrap();
        assert!(out.is_file());
        assert_eq!(
            build(&case, "main.c", Bounds::DEFAULT).unwrap(),
            out,
            "cached"
        );
        let e = build(&case, "bad.c", Bounds::DEFAULT)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not compile") && e.contains("nope"), "{e}");
    }

    #[test]
    fn no_host_file_outside_the_folder_reaches_a_message_or_the_program() {
        let (dir, case) = folder(&[("main.c", HELLO)]);
        if !tools_or_refusal(&case) {
            return;
        }
        let marker = "PMEM_LAB_SECRET_3b9f";
        let secret = dir.path().canonicalize().unwrap().join("secret.h");
        fs::write(&secret, format!("{marker} {marker}\n")).unwrap();
        let inside = "PMEM_LAB_INSIDE_77aa";
        fs::write(case.join("data.bin"), inside).unwrap();
        let s = secret.display();
        let tries = [
            ("abs.c", format!("#include \"{s}\"\nint main(void) {{ return 0; }}\n")),
            ("rel.c", "#include \"../secret.h\"\nint main(void) { return 0; }\n".to_string()),
            ("etc.c", "#include \"/etc/passwd\"\nint main(void) { return 0; }\n".to_string()),
            (
                "incbin.c",
                format!("__asm__(\".section .rodata\\n.incbin \\\"{s}\\\"\\n\");\nint main(void) {{ return 0; }}\n"),
            ),
            (
                "include.c",
                format!("__asm__(\".include \\\"{s}\\\"\\n\");\nint main(void) {{ return 0; }}\n"),
            ),
        ];
        for (name, text) in &tries {
            fs::write(case.join(name), text).unwrap();
            let e = build(&case, name, Bounds::DEFAULT).unwrap_err().to_string();
            assert!(!e.contains(marker), "{name} leaked the file: {e}");
            assert!(!e.contains("root:x:0"), "{name} leaked /etc/passwd: {e}");
            assert!(
                e.contains("No such file") || e.contains("not found"),
                "{name}: {e}"
            );
        }
        // The same .incbin of a file inside the folder works: the refusals
        // above are the sandbox's, not a broken .incbin.
        fs::write(
            case.join("ok.c"),
            "__asm__(\".section .rodata\\n.incbin \\\"data.bin\\\"\\n\");\nint main(void) { return 0; }\n",
        )
        .unwrap();
        let program = fs::read(build(&case, "ok.c", Bounds::DEFAULT).unwrap()).unwrap();
        let has = |needle: &str| {
            program
                .windows(needle.len())
                .any(|w| w == needle.as_bytes())
        };
        assert!(has(inside) && !has(marker));
    }

    #[test]
    fn each_bound_stops_the_compile_and_says_which() {
        let (_d, case) = folder(&[
            ("main.c", HELLO),
            ("zero.c", "#include \"/dev/zero\"\n"),
            ("fifo.c", "#include \"fifo\"\n"),
        ]);
        if !tools_or_refusal(&case) {
            return;
        }
        let made = Command::new("mkfifo").arg(case.join("fifo")).status();
        assert!(
            made.is_ok_and(|s| s.success()),
            "mkfifo (coreutils) is needed"
        );
        let small = Bounds {
            time: Duration::from_secs(3),
            memory: 512 << 20,
            ..Bounds::DEFAULT
        };
        let t = Instant::now();
        assert_eq!(
            build(&case, "fifo.c", small),
            Err(CompileError::Time(small.time))
        );
        assert!(t.elapsed() < Duration::from_secs(10));
        let e = build(&case, "zero.c", small).unwrap_err();
        assert!(
            matches!(e, CompileError::Memory(_) | CompileError::Time(_)),
            "{e}"
        );
        let tiny = Bounds {
            program: 64 << 10,
            ..Bounds::DEFAULT
        };
        let e = build(&case, "main.c", tiny).unwrap_err();
        assert!(matches!(e, CompileError::Program { .. }), "{e}");
        let quiet = Bounds {
            message: 200,
            ..Bounds::DEFAULT
        };
        let many = "int main(void) {\n".to_string() + &"x1 = 0;\n".repeat(500) + "}\n";
        fs::write(case.join("many.c"), many).unwrap();
        let e = build(&case, "many.c", quiet).unwrap_err().to_string();
        assert!(e.contains("more bytes of gcc's messages not shown"), "{e}");
    }

    #[test]
    fn the_key_covers_headers_and_folders_and_every_name_compiles() {
        let (dir, case) = folder(&[
            ("main.c", "#include \"h.h\"\nint main(void) { return N; }\n"),
            ("h.h", "#define N 1\n"),
        ]);
        if !tools_or_refusal(&case) {
            return;
        }
        let first = build(&case, "main.c", Bounds::DEFAULT).unwrap();
        fs::write(case.join("h.h"), "#define N 2\n").unwrap();
        let second = build(&case, "main.c", Bounds::DEFAULT).unwrap();
        assert_ne!(first, second, "an edited header compiles again");
        // The same name in another folder is another program.
        let other = dir.path().canonicalize().unwrap().join("other");
        fs::create_dir(&other).unwrap();
        fs::write(other.join("main.c"), HELLO).unwrap();
        let third = compile(
            &other.join("main.c"),
            &other,
            &dir.path().join("cache"),
            Bounds::DEFAULT,
        )
        .unwrap();
        assert_ne!(third, second);
        for name in ["..c", "-o.c", &format!("{}.c", "n".repeat(240)), "a b.c"] {
            fs::write(case.join(name), HELLO).unwrap();
            build(&case, name, Bounds::DEFAULT).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
