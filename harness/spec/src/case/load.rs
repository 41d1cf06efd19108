//! Parse and check case files. Every problem is reported as
//! `file:line:col: message` with the source line, and all problems of a file
//! are reported at once, before any VM boots.

use super::matrix;
use super::model::{self, CaseFile, ExitEntry, NamespaceMode, Patterns};
use super::step::{Scope, StepEntry};
use super::{
    Case, CaseError, CxlRegionSpec, NamespaceSpec, Step, DEFAULT_BOOT_TIMEOUT,
    DEFAULT_STEP_TIMEOUT, UNKNOWN_SIZE,
};
use crate::address::Target;
use crate::expect::{self, ExitExpect, RunExpect, SignalExpect};
use crate::machine::{CxlSpec, LatentError, MachineSpec, NvdimmSpec, RootDsm};
use crate::size::{ByteSize, GIB, KIB, MIB};
use crate::template::{self, NsField};
use serde_saphyr::{Location, Spanned};
use std::path::{Path, PathBuf};

/// The most times a step may repeat: enough for reliability runs, few
/// enough that a typo cannot hold a VM for days.
pub const MAX_REPEAT: u32 = 1000;

/// Guest memory bound: the machines here have 24G, and cases need 2G.
pub const MAX_MEMORY: u64 = 16 * GIB;
/// One NVDIMM's bound.
pub const MAX_NVDIMM: u64 = 256 * GIB;

/// The outcome for one file under the cases root.
pub struct Loaded {
    pub path: PathBuf,
    /// `namespaces/devdax-2m` for `cases/namespaces/devdax-2m.yaml`.
    pub id: String,
    pub case: Result<Case, Vec<CaseError>>,
}

/// A case file's size limit: the largest case today is a few KiB.
pub const MAX_FILE_BYTES: u64 = 256 * 1024;
/// How deep case folders may nest.
pub const MAX_DEPTH: usize = 8;
/// How many case files a cases root may hold.
pub const MAX_FILES: usize = 2000;

/// Every `*.yaml` / `*.yml` under `root`, sorted by path. Only regular files
/// are read; a symlink counts when it points at a regular file inside the
/// root, and directory symlinks are never followed (no loops, no escapes).
/// Problems with a path (a FIFO, a huge file, an unsafe name, two files for
/// one id) are reported as that file's errors; an empty root is an error.
pub fn load_dir(root: &Path) -> Result<Vec<Loaded>, RootError> {
    let unreadable = |source| RootError::Unreadable {
        root: root.to_path_buf(),
        source,
    };
    let real_root = root.canonicalize().map_err(unreadable)?;
    let mut found = Vec::new();
    collect_yaml(&real_root, root, 0, &mut found).map_err(unreadable)?;
    if found.is_empty() {
        return Err(RootError::Empty(root.to_path_buf()));
    }
    if found.len() > MAX_FILES {
        return Err(RootError::TooMany {
            root: root.to_path_buf(),
            files: found.len(),
        });
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    let ids: Vec<String> = found.iter().map(|(p, _)| case_id(root, p)).collect();
    Ok(found
        .into_iter()
        .zip(&ids)
        .flat_map(|((path, problem), id)| {
            let fail = |message: String| {
                vec![Loaded {
                    path: path.clone(),
                    id: id.clone(),
                    case: Err(vec![CaseError {
                        path: path.clone(),
                        line: 0,
                        column: 0,
                        message,
                        snippet: String::new(),
                    }]),
                }]
            };
            if let Some(problem) = problem {
                return fail(problem);
            }
            if ids.iter().filter(|i| *i == id).count() > 1 {
                return fail(format!(
                    "two case files make the id `{id}` (`.yaml` and `.yml`?): rename one"
                ));
            }
            if let Err(e) = check_id(id) {
                return fail(e.to_string());
            }
            // A bug in a check must not hide the other files' errors.
            match std::panic::catch_unwind(|| load_file(root, &path)) {
                Ok(loaded) => loaded,
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    fail(format!(
                        "internal error while checking this file ({what}): a bug of the lab, please report it with this file"
                    ))
                }
            }
        })
        .collect())
}

/// Why a cases root gives no cases at all.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("cannot read cases under {}: {source}", root.display())]
    Unreadable {
        root: PathBuf,
        source: std::io::Error,
    },
    #[error("no case files (*.yaml) under {}: add one (see docs/cases.md) or point PMEM_LAB_CASES at your cases", .0.display())]
    Empty(PathBuf),
    #[error("{files} case files under {}: the limit is {MAX_FILES}", root.display())]
    TooMany { root: PathBuf, files: usize },
}

/// Why one file of a cases tree (or the known-failure list) cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum FileProblem {
    #[error("cannot read: {0}")]
    Unreadable(std::io::Error),
    #[error("not a regular file (a FIFO, socket or device?): the lab reads regular files")]
    NotRegular,
    #[error("larger than {} KiB: a case file (and the known-failure list) stays small", MAX_FILE_BYTES / 1024)]
    TooLarge,
    #[error("not UTF-8 text")]
    NotUtf8,
    #[error("`{part}` in the case id `{id}`: file and folder names of cases use letters, digits, `.`, `_` and `-`, and do not start with `.`")]
    Id { part: String, id: String },
}

/// `namespaces/devdax-2m` for `<root>/namespaces/devdax-2m.yaml`.
fn case_id(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .with_extension("")
        .to_string_lossy()
        .into_owned()
}

/// Case ids name artifacts folders: every part uses a closed set of
/// characters and none starts with a dot.
fn check_id(id: &str) -> Result<(), FileProblem> {
    for part in id.split('/') {
        let ok = !part.is_empty()
            && !part.starts_with('.')
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !ok {
            return Err(FileProblem::Id {
                part: part.to_string(),
                id: id.to_string(),
            });
        }
    }
    Ok(())
}

/// Walk `dir` (shown under `shown`, the root as the user named it).
/// Each found file comes with a problem that stops it from being read.
fn collect_yaml(
    real_root: &Path,
    dir: &Path,
    depth: usize,
    out: &mut Vec<(PathBuf, Option<String>)>,
) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let meta = std::fs::symlink_metadata(&path)?;
        let yaml = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        if meta.is_dir() {
            if depth + 1 >= MAX_DEPTH {
                out.push((
                    path.clone(),
                    Some(format!("case folders nest at most {MAX_DEPTH} deep")),
                ));
                continue;
            }
            collect_yaml(real_root, &path, depth + 1, out)?;
        } else if !yaml || out.len() > MAX_FILES {
            continue;
        } else if meta.file_type().is_symlink() {
            let problem = match path.canonicalize() {
                Ok(t) if !t.starts_with(real_root) => Some(format!(
                    "a symlink out of the cases root (to {}): copy the case instead",
                    t.display()
                )),
                Ok(t) if !t.is_file() => Some(format!(
                    "a symlink to {}, which is not a regular file",
                    t.display()
                )),
                Ok(_) => None,
                Err(e) => Some(format!("a broken symlink: {e}")),
            };
            out.push((path, problem));
        } else if !meta.is_file() {
            out.push((
                path,
                Some(
                    "not a regular file (a FIFO, socket or device?): cases are regular files"
                        .into(),
                ),
            ));
        } else {
            out.push((path, None));
        }
    }
    Ok(())
}

/// A file the lab reads from a case tree or the repository (a case, the
/// known-failure list): a regular file (a FIFO would block the open, a link
/// to /dev/zero never end), at most [`MAX_FILE_BYTES`], UTF-8.
pub(crate) fn read_bounded(path: &Path) -> Result<String, FileProblem> {
    let meta = std::fs::metadata(path).map_err(FileProblem::Unreadable)?;
    if !meta.is_file() {
        return Err(FileProblem::NotRegular);
    }
    read_case(path)
}

/// A case file's text, at most [`MAX_FILE_BYTES`].
fn read_case(path: &Path) -> Result<String, FileProblem> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(FileProblem::Unreadable)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(FileProblem::Unreadable)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(FileProblem::TooLarge);
    }
    String::from_utf8(bytes).map_err(|_| FileProblem::NotUtf8)
}

/// One file: one case, or one per matrix cell (`id[cell]`).
pub fn load_file(root: &Path, path: &Path) -> Vec<Loaded> {
    let id = case_id(root, path);
    let failed = |line, column, message: String, snippet: String| Loaded {
        path: path.to_path_buf(),
        id: id.clone(),
        case: Err(vec![CaseError {
            path: path.to_path_buf(),
            line,
            column,
            message,
            snippet,
        }]),
    };
    let text = match read_bounded(path) {
        Ok(t) => t,
        Err(e) => return vec![failed(0, 0, e.to_string(), String::new())],
    };
    let cells = match matrix::cells(&text) {
        Ok(Some(cells)) => cells,
        Ok(None) => {
            return vec![Loaded {
                path: path.to_path_buf(),
                id: id.clone(),
                case: load_str(&id, path, &text),
            }]
        }
        Err((line, col, msg)) => return vec![failed(line, col, msg, snippet(&text, line, col))],
    };
    cells
        .iter()
        .map(|cell| {
            let cell_id = format!("{id}[{}]", cell.label);
            match matrix::substitute(&text, cell) {
                Ok(expanded) => Loaded {
                    path: path.to_path_buf(),
                    case: load_str(&cell_id, path, &expanded),
                    id: cell_id,
                },
                Err((line, col, msg)) => Loaded {
                    id: cell_id,
                    ..failed(line, col, msg, snippet(&text, line, col))
                },
            }
        })
        .collect()
}

/// The source line with a caret under `column`.
pub(crate) fn snippet(text: &str, line: u32, column: u32) -> String {
    text.lines()
        .nth(line.saturating_sub(1) as usize)
        .map(|src| {
            let gutter = format!("{line} | ");
            let pad = " ".repeat(gutter.len() + column.saturating_sub(1) as usize);
            format!("{gutter}{src}\n{pad}^")
        })
        .unwrap_or_default()
}

/// Parse and check one case from its text.
pub fn load_str(id: &str, path: &Path, text: &str) -> Result<Case, Vec<CaseError>> {
    if text.trim().is_empty() {
        return Err(vec![CaseError {
            path: path.to_path_buf(),
            line: 1,
            column: 1,
            message: "the file is empty: a case needs at least `steps:`".to_string(),
            snippet: String::new(),
        }]);
    }
    let file: CaseFile = serde_saphyr::from_str_with_options(text, yaml_options())
        .map_err(|e| vec![parse_error(path, &e)])?;
    let mut v = Checker {
        path,
        text,
        errors: Vec::new(),
        maps: Default::default(),
        file_maps: Default::default(),
        patterns: 0,
    };
    let case = v.case(id, file);
    if v.errors.is_empty() {
        Ok(case)
    } else {
        Err(v.errors)
    }
}

/// serde-saphyr's message is "error: line L column C: MESSAGE" followed by a
/// rendered snippet naming `<input>`; keep the message, name the real file.
pub(crate) fn parse_error(path: &Path, e: &serde_saphyr::Error) -> CaseError {
    let rendered = e.to_string();
    let mut lines = rendered.lines();
    let first = lines.next().unwrap_or_default();
    let message = match first.split_once(": ") {
        Some((_, rest)) if first.starts_with("error: line ") => {
            rest.split_once(": ").map(|(_, m)| m).unwrap_or(rest)
        }
        _ => first,
    };
    let (line, column) = e
        .location()
        .map(|l| (l.line() as u32, l.column() as u32))
        .unwrap_or((0, 0));
    let snippet = lines
        .map(|l| l.replace("<input>", &path.display().to_string()))
        .collect::<Vec<_>>()
        .join("\n");
    CaseError {
        path: path.to_path_buf(),
        line,
        column,
        message: plain_words(message),
        snippet,
    }
}

/// The parser's limits for a case file: far above any real case (the
/// largest has a few hundred nodes), far below what would take a second or
/// a hundred megabytes (anchors and aliases can multiply a small file).
pub fn yaml_options() -> serde_saphyr::Options {
    // Both types are non-exhaustive: start from the defaults.
    let mut budget = serde_saphyr::Budget::default();
    budget.max_events = 50_000;
    budget.max_aliases = 1_000;
    budget.max_nodes = 20_000;
    budget.max_depth = 32;
    budget.max_total_scalar_bytes = 1 << 20;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options
}

/// serde-saphyr's wording where it speaks of its own internals, in the
/// case author's terms.
fn plain_words(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("duplicate mapping key: ") {
        let key = rest
            .split(", set DuplicateKeyPolicy")
            .next()
            .unwrap_or(rest);
        return format!("`{key}` is given twice in this map");
    }
    if let Some(ty) = message.strip_prefix("invalid ") {
        if ["u8", "u16", "u32", "u64", "usize", "i32", "i64"].contains(&ty.trim()) {
            return "expected a whole number (not negative, not a word)".to_string();
        }
    }
    if let Some(name) = message.strip_prefix("data did not match any variant of untagged enum ") {
        return match name.trim() {
            "SectorEntry" => "a sector is a number or a map {sector: N, count: N}".to_string(),
            "SignalExpectEntry" => {
                "a signal is `none` or a map with name, code, offset, lsb".to_string()
            }
            "ExitEntry" => "exit is a number, `nonzero` or `any`".to_string(),
            "Patterns" => "expected a regex or a list of regexes".to_string(),
            _ => "this value has none of the accepted forms (see docs/cases.md)".to_string(),
        };
    }
    if message.contains("budget") {
        return "the file expands to too much data (YAML anchors and aliases, or nesting): \
                a case file stays small"
            .to_string();
    }
    if message.starts_with("mapping values are not allowed") {
        return "a `: ` inside a plain value reads as a new key: quote the value \
                (`name: \"late: a step\"`)"
            .to_string();
    }
    if message.starts_with("tabs disallowed") {
        return "a tab in the indentation: YAML indents with spaces".to_string();
    }
    message.to_string()
}

/// The checks of one file: every problem found, and the state that checks
/// of later steps depend on. Step kinds add their checks in `step/`.
pub(crate) struct Checker<'a> {
    path: &'a Path,
    text: &'a str,
    errors: Vec<CaseError>,
    /// Mappings alive at the step being checked: name -> length.
    pub(crate) maps: std::collections::BTreeMap<String, u64>,
    /// Which of them map a file, not a namespace.
    pub(crate) file_maps: std::collections::BTreeSet<String>,
    /// Regexes compiled so far (bounded: [`expect::MAX_PATTERNS`]).
    patterns: usize,
}

impl Checker<'_> {
    /// The folder of the case file: files a case brings are found there.
    pub(crate) fn case_dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// A problem at `at`: the one place the loader's errors (a typed one
    /// from a parser, or the check's own words) become a message.
    pub(crate) fn error(&mut self, at: &Location, message: impl std::fmt::Display) {
        let (line, column) = (at.line() as u32, at.column() as u32);
        let snippet = snippet(self.text, line, column);
        self.errors.push(CaseError {
            path: self.path.to_path_buf(),
            line,
            column,
            message: message.to_string(),
            snippet,
        });
    }

    fn case(&mut self, id: &str, file: CaseFile) -> Case {
        let name = match &file.name {
            Some(n) if n.value.trim().is_empty() => {
                self.error(&n.referenced, "name must not be empty");
                id.to_string()
            }
            Some(n) => n.value.clone(),
            None => id.to_string(),
        };
        let machine = self.machine(&file.machine);
        let cxl_regions = self.cxl_regions(&file.setup, &machine);
        let namespaces = self.namespaces(&file.setup, &machine, &cxl_regions);
        if file.steps.value.is_empty() {
            self.error(&file.steps.referenced, "a case needs at least one step");
        }
        let steps = file
            .steps
            .value
            .iter()
            .enumerate()
            .filter_map(|(i, s)| self.step(i + 1, s, &machine, &namespaces, &cxl_regions))
            .collect();
        // The poison model runs from setup with `machine.poison`, else from
        // the first `consume`: before that there is nothing to count.
        let mut model = machine.poison;
        for s in &file.steps.value {
            model |= s.value.consume.is_some();
            if let Some(m) = s.value.expect.machine_checks.as_ref().filter(|_| !model) {
                self.error(
                    &m.referenced,
                    "`expect.machine_checks` counts what the poison model raises, and it is off on this machine: drop `machine.poison: false`, or use QEMU NVDIMMs with the lab's root _DSM or CXL devices (or count after a `consume`)",
                );
            }
        }
        // A panic ends the VM: nothing can follow it.
        let last = file.steps.value.len();
        for (i, s) in file.steps.value.iter().enumerate() {
            if let Some(p) = s.value.expect.panic.as_ref().filter(|_| i + 1 != last) {
                self.error(
                    &p.referenced,
                    "a step that expects a panic must be the case's last (the VM is gone after it)",
                );
            }
        }
        Case {
            id: id.to_string(),
            name,
            description: file.description.trim().to_string(),
            path: self.path.to_path_buf(),
            machine,
            boot_timeout: file
                .machine
                .boot_timeout
                .map(|t| t.0)
                .unwrap_or(DEFAULT_BOOT_TIMEOUT),
            cxl_regions,
            namespaces,
            steps,
            allow_dmesg: self.regexes(&file.allow_dmesg),
            allow_oracle: self.regexes(&file.allow_oracle),
            cold_boot: file.cold_boot,
        }
    }

    fn machine(&mut self, m: &model::MachineSection) -> MachineSpec {
        let mut spec = MachineSpec {
            nfit_test: m.nfit_test,
            ..MachineSpec::default()
        };
        if let Some(cpus) = &m.cpus {
            if !(1..=8).contains(&cpus.value) {
                self.error(&cpus.referenced, "cpus must be between 1 and 8");
            }
            spec.cpus = cpus.value;
        }
        if let Some(mem) = &m.memory {
            if mem.value.bytes() < 256 * MIB
                || mem.value.bytes() > MAX_MEMORY
                || !mem.value.is_multiple_of(ByteSize(2 * MIB))
            {
                self.error(
                    &mem.referenced,
                    format!(
                        "memory is from 256M to {} and a multiple of 2M",
                        ByteSize(MAX_MEMORY)
                    ),
                );
            }
            spec.memory = mem.value;
        }
        if m.nvdimms.len() > 8 {
            self.error(&m.nvdimms[8].referenced, "at most 8 NVDIMMs");
        }
        for nv in &m.nvdimms {
            if nv.value.size.value.bytes() > MAX_NVDIMM {
                self.error(
                    &nv.value.size.referenced,
                    format!(
                        "an NVDIMM is at most {} (QEMU maps it into guest memory; the lab's backing file is sparse, the guest's page tables are not)",
                        ByteSize(MAX_NVDIMM)
                    ),
                );
                continue;
            }
            spec.nvdimms.push(self.nvdimm(&nv.value));
        }
        if let Some(r) = &m.root_dsm {
            spec.root_dsm = r.value;
        }
        for f in &m.root_dsm_faults {
            if spec.root_dsm == RootDsm::Lab {
                spec.dsm_faults.push(f.value);
            } else {
                self.error(
                    &f.referenced,
                    "faults are for the lab's root _DSM: drop `root_dsm: qemu`",
                );
            }
        }
        self.cxl(m, &mut spec);
        // On wherever the platform can know the poisoned lines (the lab's
        // root _DSM logs every inject and clear; CXL devices list theirs):
        // a case that injects an error and reads it gets what hardware
        // does unless it opts out.
        spec.poison = match &m.poison {
            Some(p) => {
                if p.value && !spec.lab_root_dsm() && spec.cxl.is_empty() {
                    self.error(
                        &p.referenced,
                        "the poison model needs QEMU NVDIMMs with the lab's root _DSM (it learns of injections and clears from it) or CXL devices (it learns of `cxl_inject_poison` steps)",
                    );
                }
                p.value
            }
            None => {
                spec.poison_by_default = true;
                spec.lab_root_dsm() || !spec.cxl.is_empty()
            }
        };
        self.latent_errors(m, &spec);
        self.e820_pmem(m, &mut spec);
        spec
    }

    /// CXL type-3 devices: sizes QEMU takes, on a machine of their own.
    fn cxl(&mut self, m: &model::MachineSection, spec: &mut MachineSpec) {
        if let Some(extra) = m.cxl.get(CxlSpec::MAX) {
            self.error(
                &extra.referenced,
                format!("at most {} CXL devices (one root port each)", CxlSpec::MAX),
            );
        }
        for entry in m.cxl.iter().take(CxlSpec::MAX) {
            let size = &entry.value.size;
            let b = size.value.bytes();
            if b == 0 || !b.is_multiple_of(CxlSpec::GRANULE) || b > MAX_NVDIMM {
                self.error(
                    &size.referenced,
                    format!(
                        "a CXL device's size is a non-zero multiple of 256M (QEMU's and the HDM decoders' granule), at most {}",
                        ByteSize(MAX_NVDIMM)
                    ),
                );
            }
            let lsa_size = match &entry.value.lsa_size {
                Some(l) if l.value.bytes() == 0 || !l.value.bytes().is_multiple_of(4 * KIB) => {
                    self.error(&l.referenced, "lsa_size is a non-zero multiple of 4K");
                    l.value
                }
                Some(l) if l.value.bytes() > CxlSpec::MAX_LSA_SIZE => {
                    self.error(
                        &l.referenced,
                        format!(
                            "lsa_size is at most {} (the label area is read whole when the device probes; real devices have KiBs)",
                            ByteSize(CxlSpec::MAX_LSA_SIZE)
                        ),
                    );
                    l.value
                }
                Some(l) => l.value,
                None => CxlSpec::DEFAULT_LSA_SIZE,
            };
            spec.cxl.push(CxlSpec {
                size: size.value,
                lsa_size,
            });
        }
        if let Some(first) = m.cxl.first() {
            if !m.nvdimms.is_empty() || m.nfit_test || !m.e820_pmem.is_empty() {
                self.error(
                    &first.referenced,
                    "a CXL machine (q35) takes no NVDIMMs, nfit_test or e820 pmem in the lab yet: put those in a case of their own",
                );
            }
        }
    }

    /// `setup.cxl_regions`: each a set of the machine's CXL devices, each
    /// device in one region at most (a region takes a device's capacity).
    fn cxl_regions(
        &mut self,
        setup: &model::SetupSection,
        machine: &MachineSpec,
    ) -> Vec<CxlRegionSpec> {
        let mut taken = vec![false; machine.cxl.len()];
        let mut out = Vec::new();
        for entry in &setup.cxl_regions {
            if machine.cxl.is_empty() {
                self.error(
                    &entry.referenced,
                    "a CXL region needs `machine.cxl` devices",
                );
                continue;
            }
            let (devices, at) = match &entry.value.devices {
                Some(d) => (d.value.clone(), d.referenced),
                None => (vec![0], entry.referenced),
            };
            if !matches!(devices.len(), 1 | 2 | 4) {
                self.error(&at, "a region interleaves 1, 2 or 4 devices");
                continue;
            }
            for &d in &devices {
                match taken.get_mut(d) {
                    None => self.error(
                        &at,
                        format!("CXL device {d}: machine.cxl has {}", machine.cxl.len()),
                    ),
                    Some(t) if *t => self.error(
                        &at,
                        format!("CXL device {d} is already in a region (a region takes all of a device's capacity)"),
                    ),
                    Some(t) => *t = true,
                }
            }
            out.push(CxlRegionSpec { devices });
        }
        out
    }

    /// `memmap=` ranges: inside low guest RAM above 512M (so the guest
    /// keeps at least that much to run), aligned, not overlapping.
    fn e820_pmem(&mut self, m: &model::MachineSection, spec: &mut MachineSpec) {
        use crate::machine::E820Pmem;
        for entry in &m.e820_pmem {
            let (at, size) = (entry.value.at.value.bytes(), entry.value.size.value.bytes());
            let end = at.checked_add(size);
            let a = ByteSize(E820Pmem::ALIGN);
            if size == 0
                || !at.is_multiple_of(E820Pmem::ALIGN)
                || !size.is_multiple_of(E820Pmem::ALIGN)
            {
                self.error(
                    &entry.referenced,
                    format!("`at` and `size` are non-zero multiples of {a}"),
                );
                continue;
            }
            let limit = spec.memory.bytes().min(E820Pmem::HIGHEST);
            if at < E820Pmem::LOWEST || end.is_none_or(|e| e > limit) {
                self.error(
                    &entry.referenced,
                    format!(
                        "e820 pmem lies inside guest RAM, from {} up to {} (the machine's memory, at most 3G)",
                        ByteSize(E820Pmem::LOWEST),
                        ByteSize(limit)
                    ),
                );
                continue;
            }
            let end = at + size;
            if spec
                .e820_pmem
                .iter()
                .any(|o| at < o.at + o.size && o.at < end)
            {
                self.error(&entry.referenced, "e820 pmem ranges must not overlap");
                continue;
            }
            spec.e820_pmem.push(E820Pmem { at, size });
        }
    }

    /// Latent errors need the lab's table and must fit in it.
    fn latent_errors(&mut self, m: &model::MachineSection, spec: &MachineSpec) {
        let mut units = 0u64;
        for (entry, nv) in m.nvdimms.iter().zip(&spec.nvdimms) {
            // `nv.errors` is `entry.errors` with defaults filled in, in order.
            for (e, latent) in entry.value.errors.iter().zip(&nv.errors) {
                if spec.root_dsm != RootDsm::Lab {
                    self.error(
                        &e.referenced,
                        "latent errors live in the lab's ACPI table: drop `root_dsm: qemu`",
                    );
                }
                let (at, len) = (latent.offset, latent.length);
                let unit = crate::machine::ERROR_UNIT;
                if at % unit != 0 {
                    self.error(
                        &e.value.offset.referenced,
                        format!(
                            "an error offset is a multiple of {unit} bytes (the clear-error unit)"
                        ),
                    );
                }
                if len == 0 || len % unit != 0 {
                    let at = e
                        .value
                        .length
                        .as_ref()
                        .map_or(&e.referenced, |l| &l.referenced);
                    self.error(
                        at,
                        format!("an error length is a non-zero multiple of {unit} bytes"),
                    );
                }
                if at.checked_add(len).is_none_or(|end| end > nv.region_size()) {
                    self.error(
                        &e.value.offset.referenced,
                        format!(
                            "error at {} + {len} bytes ends past the NVDIMM's {} region",
                            ByteSize(at),
                            ByteSize(nv.region_size())
                        ),
                    );
                }
                let before = units;
                units += len.div_ceil(unit);
                if units > crate::machine::MAX_ERROR_UNITS
                    && before <= crate::machine::MAX_ERROR_UNITS
                {
                    self.error(
                        &e.referenced,
                        format!(
                            "the lab's table holds {} error units of {unit} bytes ({} KiB) in all",
                            crate::machine::MAX_ERROR_UNITS,
                            crate::machine::MAX_ERROR_UNITS * unit / 1024
                        ),
                    );
                }
            }
        }
    }

    fn nvdimm(&mut self, nv: &model::NvdimmEntry) -> NvdimmSpec {
        let label_size = nv
            .label_size
            .as_ref()
            .map(|s| s.value)
            .unwrap_or(NvdimmSpec::DEFAULT_LABEL_SIZE);
        let align = nv
            .align
            .as_ref()
            .map(|s| s.value)
            .unwrap_or(NvdimmSpec::DEFAULT_ALIGN);
        if let Some(ls) = &nv.label_size {
            // QEMU refuses label areas under 128 KiB.
            if ls.value.bytes() < 128 * KIB || !ls.value.is_multiple_of(ByteSize(4 * KIB)) {
                self.error(
                    &ls.referenced,
                    "label_size must be at least 128K and a multiple of 4K",
                );
            }
        }
        if let Some(a) = &nv.align {
            let b = a.value.bytes();
            if !b.is_power_of_two() || !(4 * KIB..=GIB).contains(&b) {
                self.error(
                    &a.referenced,
                    "align must be a power of two from 4K to 1G (e.g. 2M, 16M, 1G)",
                );
            }
        }
        let spec = NvdimmSpec {
            size: nv.size.value,
            label_size,
            align,
            errors: nv
                .errors
                .iter()
                .map(|e| LatentError {
                    offset: e.value.offset.value.bytes(),
                    length: e
                        .value
                        .length
                        .as_ref()
                        .map_or(LatentError::DEFAULT_LENGTH, |l| l.value.bytes()),
                })
                .collect(),
        };
        if !spec.size.is_multiple_of(align) {
            self.error(
                &nv.size.referenced,
                format!(
                    "size {} is not a multiple of the NVDIMM's align {align}",
                    spec.size
                ),
            );
        } else if spec.usable() == 0 {
            self.error(
                &nv.size.referenced,
                format!("size {} leaves no room for a 16M-aligned region after the {label_size} label area", spec.size),
            );
        }
        spec
    }

    fn namespaces(
        &mut self,
        setup: &model::SetupSection,
        machine: &MachineSpec,
        cxl_regions: &[super::CxlRegionSpec],
    ) -> Vec<NamespaceSpec> {
        let mut out: Vec<NamespaceSpec> = Vec::new();
        // Bytes asked of each NVDIMM and of each CXL region so far.
        let mut used = vec![0u64; machine.nvdimms.len()];
        let mut cxl_used = vec![0u64; cxl_regions.len()];
        for entry in &setup.namespaces {
            let ns = &entry.value;
            let name = self.namespace_name(ns, &out);
            let bus = self.namespace_bus(ns, machine, cxl_regions.len());
            let nvdimm = match (&bus, &ns.region) {
                (Some(_), Some(r)) => r.value,
                _ => ns.nvdimm.as_ref().map(|n| n.value).unwrap_or(0),
            };
            let nvdimm_at = ns
                .nvdimm
                .as_ref()
                .map(|n| n.referenced)
                .unwrap_or(ns.name.referenced);
            if bus.is_none() && nvdimm >= machine.nvdimms.len() {
                let have = match machine.nvdimms.len() {
                    0 => "machine.nvdimms is empty".to_string(),
                    n => format!("machine.nvdimms has {n} (indexes 0..{})", n - 1),
                };
                self.error(
                    &nvdimm_at,
                    format!("namespace `{name}` is on NVDIMM {nvdimm}, but {have}"),
                );
            }
            let align = self.namespace_align(ns);
            let (size, size_at) = self.namespace_size(ns, &name, bus.is_none(), align);
            let spec = NamespaceSpec {
                name,
                nvdimm,
                bus,
                whole_region: ns.size.is_none(),
                mode: ns.mode,
                size,
                align,
            };
            match spec.bus.as_deref() {
                None => self.on_nvdimm(&spec, machine, &mut used, (nvdimm_at, size_at)),
                Some(b) if b == model::Bus::E820.name() => {
                    self.e820_namespace(ns, nvdimm, &out, machine, align);
                }
                Some(b) if b == model::Bus::Cxl.name() && !spec.whole_region => {
                    self.cxl_room(&spec, machine, cxl_regions, &mut cxl_used, size_at);
                }
                _ => {}
            }
            out.push(spec);
        }
        out
    }

    /// A namespace's name: letters, digits, `_` and `-`, once per case.
    fn namespace_name(&mut self, ns: &model::NamespaceEntry, before: &[NamespaceSpec]) -> String {
        let name = ns.name.value.clone();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
        {
            self.error(
                &ns.name.referenced,
                "namespace names use letters, digits, `_` and `-`",
            );
        }
        if before.iter().any(|o| o.name == name) {
            self.error(
                &ns.name.referenced,
                format!("namespace `{name}` is defined twice"),
            );
        }
        name
    }

    /// A namespace's size and where it is written (its name's place when
    /// it has none: the whole region of a bus that has regions of its
    /// own, an error on NVDIMMs), a multiple of its align and the region
    /// align.
    fn namespace_size(
        &mut self,
        ns: &model::NamespaceEntry,
        name: &str,
        on_nvdimm: bool,
        align: Option<ByteSize>,
    ) -> (ByteSize, Location) {
        let Some(s) = &ns.size else {
            if on_nvdimm {
                self.error(
                    &ns.name.referenced,
                    format!("namespace `{name}` needs a `size`"),
                );
            }
            return (UNKNOWN_SIZE, ns.name.referenced);
        };
        let granule = align
            .map(|a| a.bytes())
            .unwrap_or(4 * KIB)
            .max(NvdimmSpec::REGION_ALIGN);
        if !s.value.is_multiple_of(ByteSize(granule)) {
            self.error(
                &s.referenced,
                format!(
                    "size {} is not a multiple of {} (the namespace align and the 16M region align)",
                    s.value,
                    ByteSize(granule)
                ),
            );
        }
        (s.value, s.referenced)
    }

    /// A namespace on a QEMU NVDIMM: it fits beside the NVDIMM's other
    /// namespaces, the NVDIMM's region starts where ndctl takes its mode,
    /// and its align leaves data (`at`: where the NVDIMM and the size are
    /// written).
    fn on_nvdimm(
        &mut self,
        spec: &NamespaceSpec,
        machine: &MachineSpec,
        used: &mut [u64],
        (nvdimm_at, size_at): (Location, Location),
    ) {
        let nvdimm = spec.nvdimm;
        if let Some(nv) = machine.nvdimms.get(nvdimm).filter(|_| !spec.whole_region) {
            used[nvdimm] = used[nvdimm].saturating_add(spec.size.bytes());
            if used[nvdimm] > nv.usable() {
                self.error(
                    &size_at,
                    format!(
                        "NVDIMM {nvdimm} ({}, {} label area) is too small: its namespaces need {}, it has {} usable",
                        nv.size,
                        nv.label_size,
                        ByteSize(used[nvdimm]),
                        ByteSize(nv.usable())
                    ),
                );
            }
        }
        if spec.mode != NamespaceMode::Raw {
            if let Some(offset) = machine
                .region_offsets()
                .get(nvdimm)
                .filter(|o| !o.is_multiple_of(NvdimmSpec::REGION_ALIGN))
            {
                self.error(
                    &nvdimm_at,
                    format!(
                        "NVDIMM {nvdimm} will start {} after the first (QEMU packs each NVDIMM right after the \
                         previous one's region), not on a 16M boundary, and ndctl refuses {} namespaces \
                         there: give the NVDIMMs before it `align: 16M` (or a larger power of two)",
                        ByteSize(*offset),
                        spec.mode.ndctl_name()
                    ),
                );
            }
        }
        if let (false, Some(a)) = (spec.whole_region, spec.align) {
            if matches!(spec.mode, NamespaceMode::Fsdax | NamespaceMode::Devdax) {
                if let Some(why) =
                    crate::namespace::pfn_align_problem(None, spec.size.bytes(), a.bytes())
                {
                    self.error(&size_at, why);
                }
            }
        }
    }

    /// A namespace on a CXL region fits beside the region's others.
    fn cxl_room(
        &mut self,
        spec: &NamespaceSpec,
        machine: &MachineSpec,
        cxl_regions: &[super::CxlRegionSpec],
        cxl_used: &mut [u64],
        size_at: Location,
    ) {
        let index = spec.nvdimm;
        let (Some(region), Some(used)) = (cxl_regions.get(index), cxl_used.get_mut(index)) else {
            return;
        };
        let capacity: u64 = region
            .devices
            .iter()
            .filter_map(|&d| machine.cxl.get(d))
            .map(|c| c.size.bytes())
            .sum();
        *used = used.saturating_add(spec.size.bytes());
        if *used > capacity {
            self.error(
                &size_at,
                format!(
                    "CXL region {index} ({} of {} device(s)) is too small: its namespaces need {}",
                    ByteSize(capacity),
                    region.devices.len(),
                    ByteSize(*used)
                ),
            );
        }
    }

    /// A namespace on an e820 range: the range is a label-less region, so it
    /// holds one namespace, the whole range (the kernel makes it; setup only
    /// reconfigures it), and an fsdax or devdax align must leave data.
    fn e820_namespace(
        &mut self,
        ns: &model::NamespaceEntry,
        index: usize,
        before: &[NamespaceSpec],
        machine: &MachineSpec,
        align: Option<ByteSize>,
    ) {
        let at = ns
            .region
            .as_ref()
            .map(|r| r.referenced)
            .unwrap_or(ns.name.referenced);
        // The bus lists its regions in address order.
        let mut ranges = machine.e820_pmem.clone();
        ranges.sort_by_key(|r| r.at);
        let Some(range) = ranges.get(index) else {
            if !ranges.is_empty() {
                self.error(
                    &at,
                    format!(
                        "bus `e820` region {index}: machine.e820_pmem has {} range(s) (regions 0..{}, in address order)",
                        ranges.len(),
                        ranges.len() - 1
                    ),
                );
            }
            return;
        };
        if let Some(first) = before
            .iter()
            .find(|o| o.bus.as_deref() == Some(model::Bus::E820.name()) && o.nvdimm == index)
        {
            self.error(
                &at,
                format!(
                    "e820 region {index} already holds namespace `{}`: an e820 range has no label area, so its one namespace is the whole range",
                    first.name
                ),
            );
        }
        if let Some(s) = &ns.size {
            self.error(
                &s.referenced,
                format!(
                    "an e820 namespace is its whole range ({}): leave `size` out (a label-less region cannot be divided)",
                    ByteSize(range.size)
                ),
            );
        }
        if let Some(a) =
            align.filter(|_| matches!(ns.mode, NamespaceMode::Fsdax | NamespaceMode::Devdax))
        {
            if let Some(why) =
                crate::namespace::pfn_align_problem(Some(range.at), range.size, a.bytes())
            {
                let at = ns.align.as_ref().map(|a| a.referenced).unwrap_or(at);
                self.error(&at, why);
            }
        }
    }

    /// Where a namespace starts and how large it is, where the loader can
    /// know: e820 ranges exactly, QEMU NVDIMM namespaces by size (their
    /// start depends on the labels); nfit_test regions not at all.
    pub(crate) fn extent(ns: &NamespaceSpec, machine: &MachineSpec) -> Option<(Option<u64>, u64)> {
        match ns.bus.as_deref() {
            None if !ns.whole_region => Some((None, ns.size.bytes())),
            Some(b) if b == model::Bus::E820.name() => {
                let mut ranges = machine.e820_pmem.clone();
                ranges.sort_by_key(|r| r.at);
                ranges.get(ns.nvdimm).map(|r| (Some(r.at), r.size))
            }
            _ => None,
        }
    }

    /// The nfit_test bus a namespace asks for, checked.
    fn namespace_bus(
        &mut self,
        ns: &model::NamespaceEntry,
        machine: &MachineSpec,
        cxl_regions: usize,
    ) -> Option<String> {
        let Some(bus) = &ns.bus else {
            if let Some(r) = &ns.region {
                self.error(
                    &r.referenced,
                    "`region` picks a region of an nfit_test `bus`; QEMU NVDIMMs use `nvdimm`",
                );
            }
            return None;
        };
        if bus.value == model::Bus::AcpiNfit {
            self.error(
                &bus.referenced,
                "QEMU's NVDIMMs need no bus: leave `bus` out (or use nfit_test.0, nfit_test.1, e820)",
            );
        }
        match bus.value {
            model::Bus::E820 if machine.e820_pmem.is_empty() => {
                self.error(&bus.referenced, "bus `e820` needs `machine.e820_pmem`")
            }
            model::Bus::NfitTest0 | model::Bus::NfitTest1 if !machine.nfit_test => self.error(
                &bus.referenced,
                format!("bus `{}` needs `machine.nfit_test: true`", bus.value.name()),
            ),
            model::Bus::Cxl => {
                let r = ns.region.as_ref().map(|r| r.value).unwrap_or(0);
                if r >= cxl_regions {
                    let at = ns
                        .region
                        .as_ref()
                        .map(|r| r.referenced)
                        .unwrap_or(bus.referenced);
                    self.error(
                        &at,
                        format!("bus `cxl` region {r}: setup.cxl_regions has {cxl_regions}"),
                    );
                }
            }
            _ => {}
        }
        if let Some(n) = &ns.nvdimm {
            self.error(
                &n.referenced,
                "`nvdimm` is for QEMU NVDIMMs; on an nfit_test bus use `region`",
            );
        }
        Some(bus.value.name().to_string())
    }

    fn namespace_align(&mut self, ns: &model::NamespaceEntry) -> Option<ByteSize> {
        self.mode_align(ns.mode, ns.align.as_ref())
    }

    /// A namespace align for `mode`: none for raw (it maps nothing), else
    /// one of the sizes device-dax and fsdax fault at.
    pub(crate) fn mode_align(
        &mut self,
        mode: NamespaceMode,
        align: Option<&Spanned<ByteSize>>,
    ) -> Option<ByteSize> {
        let a = align?;
        if matches!(mode, NamespaceMode::Raw | NamespaceMode::Sector) {
            self.error(
                &a.referenced,
                format!(
                    "a {} namespace has no align (it maps nothing)",
                    mode.ndctl_name()
                ),
            );
            return None;
        }
        if ![4 * KIB, 2 * MIB, GIB].contains(&a.value.bytes()) {
            self.error(&a.referenced, "namespace align must be 4K, 2M or 1G");
        }
        Some(a.value)
    }

    fn step(
        &mut self,
        number: usize,
        entry: &Spanned<StepEntry>,
        machine: &MachineSpec,
        namespaces: &[NamespaceSpec],
        cxl_regions: &[CxlRegionSpec],
    ) -> Option<Step> {
        let s = &entry.value;
        let at = entry.referenced;
        let keys = s.action_keys();
        let [key] = keys[..] else {
            let msg = if keys.is_empty() {
                format!(
                    "this step has no action: add one of {}",
                    StepEntry::KINDS
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            } else {
                format!("a step has one action, this one has {}", keys.join(" and "))
            };
            self.error(&at, msg);
            return None;
        };
        let scope = Scope {
            machine,
            namespaces,
            cxl_regions,
            step: s,
        };
        let (name, action) = s.check_action(self, &scope)?;
        if !action.runs_command() {
            self.refuse_command_fields(s, key, &at);
        }
        self.expect_applies(s, &action);
        self.panic_alone(s);
        let repeat = match &s.repeat {
            Some(r) if r.value == 0 || r.value > MAX_REPEAT => {
                self.error(&r.referenced, format!("repeat is from 1 to {MAX_REPEAT}"));
                1
            }
            Some(r) => r.value,
            None => 1,
        };
        Some(Step {
            number,
            name: s.name.clone().unwrap_or(name),
            line: at.line() as u32,
            action,
            timeout: s.timeout.map(|t| t.0).unwrap_or(DEFAULT_STEP_TIMEOUT),
            expect: self.expect(&s.expect),
            dmesg: self.regexes(&s.expect.dmesg),
            dmesg_not: self.regexes(&s.expect.dmesg_not),
            faults: s.expect.faults.as_ref().map(|f| f.value),
            machine_checks: s.expect.machine_checks.as_ref().map(|m| m.value),
            panic: s
                .expect
                .panic
                .as_ref()
                .and_then(|p| self.regex(&p.value, &p.referenced)),
            signal: s.expect.signal.as_ref().and_then(|e| self.signal_expect(e)),
            repeat,
        })
    }

    /// Each `expect` field the step's action can report: faults of a
    /// touch, a signal of a consume, poison or signals, a panic of a
    /// command.
    fn expect_applies(&mut self, s: &StepEntry, action: &super::Action) {
        if let Some(f) = s.expect.faults.as_ref().filter(|_| !action.counts_faults()) {
            self.error(&f.referenced, "`expect.faults` applies to `touch` steps");
        }
        if let Some(f) = s
            .expect
            .signal
            .as_ref()
            .filter(|_| !action.reports_signal())
        {
            self.error(
                &f.referenced,
                "`expect.signal` applies to `consume`, `poison` and `signals` steps",
            );
        }
        if let Some(p) = s
            .expect
            .panic
            .as_ref()
            .filter(|_| !matches!(action, super::Action::Run(_) | super::Action::Sh(_)))
        {
            self.error(
                &p.referenced,
                "`expect.panic` applies to `run` and `sh` steps",
            );
        }
    }

    /// A step that expects a panic expects nothing else of the guest (it
    /// is gone when the step ends) and runs once.
    fn panic_alone(&mut self, s: &StepEntry) {
        if let Some(p) = &s.expect.panic {
            // The guest is gone when the step ends: nothing it would report
            // can be read (the host's count of machine checks still can).
            let e = &s.expect;
            let other: Vec<&str> = [
                ("exit", e.exit.is_some()),
                ("stdout", e.stdout.is_some()),
                ("stderr", e.stderr.is_some()),
                ("stdout_not", e.stdout_not.is_some()),
                ("json", e.json.is_some()),
                ("dmesg", e.dmesg.is_some()),
                ("dmesg_not", e.dmesg_not.is_some()),
            ]
            .into_iter()
            .filter_map(|(k, set)| set.then_some(k))
            .collect();
            if !other.is_empty() {
                self.error(
                    &p.referenced,
                    format!(
                        "`expect.panic` ends the guest: `{}` beside it can never be checked (the console line is the evidence)",
                        other.join("`, `")
                    ),
                );
            }
        }
        if let Some(p) = s.expect.panic.as_ref().filter(|_| s.repeat.is_some()) {
            self.error(&p.referenced, "a step that expects a panic cannot repeat");
        }
    }

    fn signal_expect(&mut self, e: &Spanned<model::SignalExpectEntry>) -> Option<SignalExpect> {
        Some(match &e.value {
            model::SignalExpectEntry::None => SignalExpect::None,
            model::SignalExpectEntry::Some(f) => SignalExpect::Some {
                name: "SIGBUS".to_string(),
                code: f.code.map(|c| c.name().to_string()),
                offset: f.offset.map(|o| o.bytes()),
                lsb: f.lsb,
            },
        })
    }

    pub(crate) fn map_len(&mut self, map: &Spanned<String>) -> Option<u64> {
        let len = self.maps.get(&map.value).copied();
        if len.is_none() {
            let live: Vec<&str> = self.maps.keys().map(String::as_str).collect();
            self.error(
                &map.referenced,
                format!(
                    "no mapping `{}` at this step (mapped now: {})",
                    map.value,
                    if live.is_empty() {
                        "none".to_string()
                    } else {
                        live.join(", ")
                    }
                ),
            );
        }
        len
    }

    /// The setup namespace a step names, or an error at `at` listing the
    /// names setup defines.
    pub(crate) fn namespace<'n>(
        &mut self,
        name: &str,
        at: &Location,
        namespaces: &'n [NamespaceSpec],
    ) -> Option<&'n NamespaceSpec> {
        let found = namespaces.iter().find(|n| n.name == name);
        if found.is_none() {
            let known: Vec<&str> = namespaces.iter().map(|n| n.name.as_str()).collect();
            let known = if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            };
            self.error(
                at,
                format!("unknown namespace `{name}` (setup defines: {known})"),
            );
        }
        found
    }

    pub(crate) fn cpu(&mut self, cpu: &Option<Spanned<u32>>, machine: &MachineSpec) -> u32 {
        let Some(c) = cpu else { return 0 };
        if c.value >= machine.cpus {
            self.error(
                &c.referenced,
                format!(
                    "cpu {} does not exist: the machine has {}",
                    c.value, machine.cpus
                ),
            );
        }
        c.value
    }

    /// `stdin`, `env` and the result expectations only make sense for a
    /// command; elsewhere they would silently check nothing.
    fn refuse_command_fields(&mut self, s: &StepEntry, action: &str, at: &Location) {
        let e = &s.expect;
        let spans = [
            s.stdin.as_ref().map(|x| x.referenced),
            e.exit.as_ref().map(|x| x.referenced),
            e.stdout.as_ref().map(|x| x.referenced),
            e.stderr.as_ref().map(|x| x.referenced),
            e.stdout_not.as_ref().map(|x| x.referenced),
            e.json.as_ref().map(|x| x.referenced),
        ];
        for span in spans.into_iter().flatten() {
            self.error(&span, format!("`{action}` runs no command: `exit`, `stdout`, `stderr`, `json` and `stdin` do not apply"));
        }
        if !s.env.is_empty() {
            self.error(
                at,
                format!("`{action}` runs no command: `env` does not apply"),
            );
        }
    }

    /// The target of an inject or expect_badblocks: a namespace or a region.
    pub(crate) fn target(
        &mut self,
        at: &Location,
        namespace: &Option<Spanned<String>>,
        region: &Option<Spanned<usize>>,
        machine: &MachineSpec,
        namespaces: &[NamespaceSpec],
    ) -> Option<Target> {
        match (namespace, region) {
            (Some(ns), None) => self
                .namespace(&ns.value, &ns.referenced, namespaces)
                .map(|n| Target::Namespace(n.name.clone())),
            (None, Some(r)) => {
                if r.value < machine.nvdimms.len() {
                    Some(Target::Region(r.value))
                } else {
                    self.error(
                        &r.referenced,
                        format!(
                            "region {} does not exist: the machine has {} NVDIMM(s)",
                            r.value,
                            machine.nvdimms.len()
                        ),
                    );
                    None
                }
            }
            _ => {
                self.error(
                    at,
                    "name exactly one of `namespace` or `region` (an NVDIMM index)",
                );
                None
            }
        }
    }

    pub(crate) fn check_placeholders(&mut self, text: &str, at: &Location, scope: &Scope<'_>) {
        let found = match template::placeholders(text) {
            Ok(p) => p,
            Err(e) => return self.error(at, e),
        };
        for p in found {
            match p.target {
                template::Ref::Ns { name, field } => {
                    let Some(ns) = self.namespace(&name, at, scope.namespaces) else {
                        continue;
                    };
                    if let Err(e) = field_applies(ns, field) {
                        self.error(at, e);
                    }
                }
                template::Ref::Cxl { device, field } => {
                    let have = scope.machine.cxl.len();
                    if device >= have {
                        self.error(
                            at,
                            format!(
                                "`${{cxl.{device}.{}}}`: machine.cxl has {have}",
                                field.name()
                            ),
                        );
                    } else if field == template::CxlField::Region
                        && !scope
                            .cxl_regions
                            .iter()
                            .any(|r| r.devices.contains(&device))
                    {
                        self.error(
                            at,
                            format!("`${{cxl.{device}.region}}`: no setup.cxl_regions entry has device {device}"),
                        );
                    }
                }
            }
        }
    }

    fn expect(&mut self, e: &model::ExpectEntry) -> RunExpect {
        let exit = match &e.exit {
            None => ExitExpect::Code(0),
            Some(x) => match &x.value {
                ExitEntry::Code(c) if (0..=255).contains(c) => ExitExpect::Code(*c as i32),
                ExitEntry::Code(c) => {
                    self.error(
                        &x.referenced,
                        format!("exit {c}: an exit status is from 0 to 255 (a signal shows as 128 + its number)"),
                    );
                    ExitExpect::Any
                }
                ExitEntry::Any => ExitExpect::Any,
                ExitEntry::NonZero => ExitExpect::NonZero,
            },
        };
        RunExpect {
            exit,
            stdout: self.regexes(&e.stdout),
            stderr: self.regexes(&e.stderr),
            stdout_not: self.regexes(&e.stdout_not),
            json: e.json.as_ref().map(|j| j.value.clone()),
        }
    }

    fn regexes(&mut self, p: &Option<Spanned<Patterns>>) -> Vec<regex::Regex> {
        let Some(p) = p else { return Vec::new() };
        p.value
            .items(p.referenced)
            .into_iter()
            .filter_map(|(pat, at)| self.regex(pat, &at))
            .collect()
    }

    /// One regex of the file, counted against its budget; one that matches
    /// any text is refused (it would check, or allow, nothing).
    pub(crate) fn regex(&mut self, pattern: &str, at: &Location) -> Option<regex::Regex> {
        self.patterns += 1;
        if self.patterns == expect::MAX_PATTERNS + 1 {
            self.error(
                at,
                format!(
                    "more than {} regexes in one case: the rest are not compiled",
                    expect::MAX_PATTERNS
                ),
            );
        }
        if self.patterns > expect::MAX_PATTERNS {
            return None;
        }
        match expect::compile(pattern) {
            Ok(re) if expect::matches_anything(&re) => {
                self.error(
                    at,
                    format!("`{pattern}` matches any text (the empty string too): it would check, or allow, nothing; write what the line says"),
                );
                None
            }
            Ok(re) => Some(re),
            Err(e) => {
                self.error(at, e);
                None
            }
        }
    }
}

/// An optional size field in bytes.
pub(crate) fn bytes(size: &Option<Spanned<ByteSize>>) -> Option<u64> {
    size.as_ref().map(|s| s.value.bytes())
}

/// Whether a namespace of this mode has the field a placeholder asks for.
pub fn field_applies(ns: &NamespaceSpec, field: NsField) -> Result<(), NoSuchField> {
    let ok = match field {
        NsField::Dev | NsField::Region => true,
        NsField::Chardev => ns.mode == NamespaceMode::Devdax,
        NsField::Blockdev => ns.mode != NamespaceMode::Devdax,
    };
    if ok {
        Ok(())
    } else {
        Err(NoSuchField {
            namespace: ns.name.clone(),
            mode: ns.mode.ndctl_name(),
            field: field.name(),
        })
    }
}

/// A placeholder's field that a namespace's mode does not have.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("namespace `{namespace}` is {mode} and has no {field}")]
pub struct NoSuchField {
    pub namespace: String,
    pub mode: &'static str,
    pub field: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::case::Action;

    fn load(text: &str) -> Result<Case, Vec<CaseError>> {
        load_str("t/case", Path::new("cases/t/case.yaml"), text)
    }

    fn errors(text: &str) -> Vec<String> {
        load(text)
            .unwrap_err()
            .iter()
            .map(|e| format!("{}:{} {}", e.line, e.column, e.message))
            .collect()
    }

    const GOOD: &str = "\
description: ok
machine:
  cpus: 2
  nvdimms:
    - size: 1G
    - size: 4G
      align: 1G
      label_size: 256K
setup:
  namespaces:
    - name: data
      nvdimm: 1
      mode: devdax
      size: 3G
      align: 1G
    - name: fs
      mode: fsdax
      size: 512M
steps:
  - run: [daxctl, list, \"--dev=${ns.data.chardev}\"]
    expect:
      json: [{align: 1073741824}]
  - name: mount
    sh: mount -o dax /dev/${ns.fs.blockdev} /mnt
    timeout: 90s
    expect:
      exit: nonzero
      stderr: [a, '^b$']
";

    #[test]
    fn a_complete_case_loads_with_defaults() {
        let c = load(GOOD).unwrap();
        assert_eq!(c.id, "t/case");
        assert_eq!(c.name, "t/case");
        assert_eq!(c.machine.cpus, 2);
        assert_eq!(c.machine.nvdimms[1].align, ByteSize(GIB));
        assert_eq!(
            c.machine.nvdimms[0].label_size,
            NvdimmSpec::DEFAULT_LABEL_SIZE
        );
        assert_eq!(c.namespaces[0].nvdimm, 1);
        assert_eq!(c.namespaces[1].nvdimm, 0);
        assert_eq!(c.steps.len(), 2);
        assert_eq!(c.steps[0].name, "daxctl list --dev=${ns.data.chardev}");
        assert_eq!(c.steps[0].line, 20);
        assert_eq!(c.steps[0].timeout, DEFAULT_STEP_TIMEOUT);
        assert_eq!(c.steps[1].timeout, std::time::Duration::from_secs(90));
        assert_eq!(c.steps[1].expect.exit, ExitExpect::NonZero);
        assert_eq!(c.steps[1].expect.stderr.len(), 2);
        let Action::Sh(crate::case::step::Command { argv, .. }) = &c.steps[1].action else {
            panic!("a run step")
        };
        assert_eq!(argv[..2], ["sh", "-c"]);
    }

    #[test]
    fn the_poison_model_is_on_wherever_the_platform_knows_the_lines() {
        let on = |machine: &str| {
            load(&format!("machine:\n{machine}steps:\n  - run: [true]\n"))
                .unwrap()
                .machine
                .poison
        };
        assert!(on("  nvdimms: [{size: 1G}]\n"));
        assert!(!on("  poison: false\n  nvdimms: [{size: 1G}]\n"));
        // QEMU's own table tells the lab of no injection or clear.
        assert!(!on("  root_dsm: qemu\n  nvdimms: [{size: 1G}]\n"));
        // No NVDIMM of QEMU's: nothing to watch.
        assert!(!on("  nfit_test: true\n"));
        assert!(!on("  cpus: 1\n"));
    }

    #[test]
    fn syntax_errors_name_file_line_and_column() {
        let e = load("steps:\n  - run: [a, b\n").unwrap_err();
        assert_eq!(e.len(), 1);
        let shown = e[0].to_string();
        assert!(shown.starts_with("cases/t/case.yaml:"), "{shown}");
        assert!(e[0].line >= 2, "{shown}");
    }

    #[test]
    fn unknown_fields_are_errors_at_their_place() {
        let e = load("steps:\n  - run: [true]\n    expcet: {exit: 0}\n").unwrap_err();
        assert_eq!((e[0].line, e[0].column), (3, 5), "{}", e[0]);
        assert!(e[0].message.contains("unknown field `expcet`"), "{}", e[0]);
        assert!(e[0]
            .to_string()
            .starts_with("cases/t/case.yaml:3:5: unknown field `expcet`"));
    }

    #[test]
    fn latent_errors_and_faults_are_checked_before_boot() {
        let text = "\
machine:
  root_dsm: lab
  root_dsm_faults: [truncated-ars-status, flaky]
  nvdimms:
    - size: 1G
      errors:
        - {offset: 100M}
        - {offset: 0x1001}
        - {offset: 1021M, length: 2M}
        - {offset: 8M, length: 0}
steps:
  - run: [true]
";
        // A fault name is a closed vocabulary: serde refuses it at once.
        assert_eq!(
            errors(text),
            ["3:43 unknown variant `flaky`, expected one of truncated-ars-status"]
        );
        let got = errors(&text.replace(", flaky", ""));
        let want = [
            "8:20 an error offset is a multiple of 256 bytes",
            "9:20 error at 1021M + 2097152 bytes ends past the NVDIMM's 1022M region",
            "9:11 the lab's table holds 256 error units of 256 bytes (64 KiB) in all",
            "10:32 an error length is a non-zero multiple of 256 bytes",
        ];
        assert_eq!(got.len(), want.len(), "{got:#?}");
        for (g, w) in got.iter().zip(want) {
            assert!(g.contains(w), "{g} !~ {w}");
        }
        let case = load(
            &text
                .replace(", flaky", "")
                .replace("0x1001", "0x1000")
                .replace("1021M, length: 2M", "1000M, length: 8K")
                .replace("length: 0", "length: 256"),
        )
        .unwrap();
        let nv = &case.machine.nvdimms[0];
        assert_eq!(nv.errors.len(), 4);
        assert_eq!(
            nv.errors[0],
            LatentError {
                offset: 100 << 20,
                length: 512
            }
        );
        assert_eq!(
            case.machine.dsm_faults,
            vec![crate::machine::DsmFault::TruncatedArsStatus]
        );

        let stock = "machine:\n  root_dsm: qemu\n  nvdimms:\n    - size: 1G\n      errors: [{offset: 1M}]\nsteps:\n  - run: [true]\n";
        assert!(
            errors(stock)[0].contains("5:16 latent errors live in the lab's ACPI table"),
            "{:?}",
            errors(stock)
        );
        let bad = "machine:\n  root_dsm: firmware\nsteps:\n  - run: [true]\n";
        assert!(
            errors(bad)[0].contains("2:13 unknown variant `firmware`, expected one of lab, qemu"),
            "{:?}",
            errors(bad)
        );
    }

    #[test]
    fn semantic_errors_are_all_reported_with_locations() {
        let text = "\
machine:
  nvdimms:
    - size: 1G
setup:
  namespaces:
    - name: a
      mode: devdax
      size: 1000M
      align: 2M
    - name: b
      mode: raw
      size: 512M
      align: 2M
    - name: c
      nvdimm: 3
      mode: fsdax
      size: 16M
steps:
  - run: [cat, \"${ns.nope.dev}\"]
  - sh: echo ${ns.b.chardev}
  - run: [x]
    expect:
      stdout: '('
      exit: 3
  - name: empty
";
        let got = errors(text);
        let want = [
            "8:13 size 1000M is not a multiple of 16M",
            "13:14 a raw namespace has no align",
            "12:13 NVDIMM 0 (1G, 128K label area) is too small: its namespaces need 1512M",
            "15:15 namespace `c` is on NVDIMM 3, but machine.nvdimms has 1",
            "19:16 unknown namespace `nope` (setup defines: a, b, c)",
            "20:9 namespace `b` is raw and has no chardev",
            "23:15 bad regex",
            "25:5 this step has no action",
        ];
        assert_eq!(got.len(), want.len(), "{got:#?}");
        for w in want {
            assert!(
                got.iter().any(|g| g.starts_with(w)),
                "missing {w:?} in {got:#?}"
            );
        }
    }

    #[test]
    fn an_exit_word_outside_the_vocabulary_is_refused_where_written() {
        assert_eq!(
            errors("steps:\n  - run: [x]\n    expect: {exit: sometimes}\n"),
            ["3:20 exit `sometimes`: write a number, `nonzero` or `any`"]
        );
    }

    #[test]
    fn an_nvdimm_too_small_for_its_namespaces_is_refused() {
        let text = "\
machine:
  nvdimms:
    - size: 1G
setup:
  namespaces:
    - {name: a, mode: fsdax, size: 512M}
    - {name: b, mode: fsdax, size: 512M}
steps:
  - run: [true]
";
        let got = errors(text);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].starts_with("7:36 NVDIMM 0 (1G, 128K label area) is too small: its namespaces need 1G, it has 1008M usable"), "{got:?}");
    }

    #[test]
    fn nvdimm_shapes_are_checked() {
        let text = "\
machine:
  nvdimms:
    - {size: 1G, align: 3M}
    - {size: 1025M, align: 2M}
    - {size: 1G, label_size: 64K}
steps:
  - run: [true]
";
        let got = errors(text);
        assert!(
            got.iter()
                .any(|g| g.starts_with("3:25 align must be a power of two from 4K to 1G")),
            "{got:?}"
        );
        assert!(
            got.iter()
                .any(|g| g.starts_with("3:14 size 1G is not a multiple of the NVDIMM's align 3M")),
            "{got:?}"
        );
        assert!(
            got.iter().any(
                |g| g.starts_with("4:14 size 1025M is not a multiple of the NVDIMM's align 2M")
            ),
            "{got:?}"
        );
        assert!(
            got.iter()
                .any(|g| g.starts_with("5:30 label_size must be at least 128K")),
            "{got:?}"
        );
    }

    #[test]
    fn dax_namespaces_on_a_misaligned_second_nvdimm_are_refused() {
        let text = "\
machine:
  nvdimms:
    - {size: 1G}
    - {size: 1G}
setup:
  namespaces:
    - {name: a, nvdimm: 1, mode: raw, size: 256M}
    - {name: b, nvdimm: 1, mode: devdax, size: 256M}
steps:
  - run: [true]
";
        let got = errors(text);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with("8:25 NVDIMM 1 will start 1022M after the first"),
            "{got:?}"
        );
        assert!(got[0].contains("`align: 16M`"), "{got:?}");
        let fixed = text.replacen("- {size: 1G}", "- {size: 1G, align: 16M}", 1);
        assert!(load(&fixed).is_ok());
    }

    #[test]
    fn a_case_needs_steps() {
        assert!(errors("steps: []\n")[0].contains("at least one step"));
        assert!(load("description: x\n").unwrap_err()[0]
            .message
            .contains("missing field `steps`"));
    }
}
