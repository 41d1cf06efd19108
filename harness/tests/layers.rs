//! The harness's layering rule, checked on its own source (parsed with syn,
//! so comments, strings and test modules cannot fool it):
//! - each folder of src/ imports only itself and the folders below it in
//!   [`LAYERS`];
//! - no import cycle between modules (a folder's own mod.rs and each module
//!   in it are one node each; a folder nested deeper, like vm/poison/, is one
//!   node);
//! - the VM layer knows no case: of the case model (the spec crate) it uses
//!   only the machine description and its units ([`SPEC_FOR_VM`]).
//!
//! Test modules (`#[cfg(test)]`) are exempt: a test may build a case to
//! drive what it tests. docs/architecture.md states the rule.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use syn::visit::Visit;

/// Bottom first: a folder may import the ones before it.
const LAYERS: &[&str] = &["vm", "guest", "boot", "observe", "run"];

/// The spec crate's modules the VM layer may use.
const SPEC_FOR_VM: &[&str] = &["machine", "size", "mce"];

/// One module file: its module path (`["vm", "poison", "watcher"]`) and text.
struct Source {
    file: PathBuf,
    module: Vec<String>,
    text: String,
}

fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" {
        parts.push(stem.to_string());
    }
    parts
}

fn sources(src: &Path) -> Vec<Source> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    for layer in LAYERS {
        walk(&src.join(layer), &mut files);
    }
    files.sort();
    files
        .into_iter()
        .map(|file| Source {
            module: module_path(src, &file),
            text: std::fs::read_to_string(&file).unwrap(),
            file,
        })
        .collect()
}

/// Every path a file names that starts with `crate`, `super`, `self` or the
/// spec crate, outside test modules, as written.
#[derive(Default)]
struct Paths(Vec<Vec<String>>);

impl Paths {
    fn push(&mut self, p: Vec<String>) {
        if matches!(
            p.first().map(String::as_str),
            Some("crate" | "super" | "self" | "pmem_lab_spec")
        ) {
            self.0.push(p);
        }
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let mut p = prefix.clone();
                if n.ident != "self" {
                    p.push(n.ident.to_string());
                }
                self.push(p);
            }
            syn::UseTree::Rename(r) => {
                let mut p = prefix.clone();
                p.push(r.ident.to_string());
                self.push(p);
            }
            syn::UseTree::Glob(_) => self.push(prefix.clone()),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
        }
    }
}

fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg") && a.parse_args::<syn::Ident>().is_ok_and(|i| i == "test")
    })
}

impl<'ast> Visit<'ast> for Paths {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs: &[syn::Attribute] = match item {
            syn::Item::Mod(i) => &i.attrs,
            syn::Item::Fn(i) => &i.attrs,
            syn::Item::Use(i) => &i.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Const(i) => &i.attrs,
            syn::Item::Static(i) => &i.attrs,
            syn::Item::Struct(i) => &i.attrs,
            syn::Item::Enum(i) => &i.attrs,
            _ => &[],
        };
        if !is_test_only(attrs) {
            syn::visit::visit_item(self, item);
        }
    }
    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &u.tree);
    }
    fn visit_path(&mut self, p: &'ast syn::Path) {
        self.push(p.segments.iter().map(|s| s.ident.to_string()).collect());
        syn::visit::visit_path(self, p);
    }
}

/// A node of the import graph: a layer's mod.rs (`vm`) or a module in it
/// (`vm/launch`, `vm/poison`); the spec crate's modules are `spec:case`.
fn node(modules: &BTreeSet<Vec<String>>, path: &[String]) -> String {
    if path.len() >= 2 && modules.contains(&path[..2].to_vec()) {
        format!("{}/{}", path[0], path[1])
    } else {
        path[0].clone()
    }
}

/// The absolute module path a written path names.
fn resolve(from: &[String], written: &[String]) -> Vec<String> {
    let mut here: Vec<String> = from.to_vec();
    let mut rest = written;
    match written[0].as_str() {
        "crate" | "pmem_lab_spec" => {
            here.clear();
            rest = &written[1..];
        }
        "self" | "super" => {
            // A file's own module is `self` (a mod.rs's is its folder);
            // `super` is its parent.
            let mut supers = 0;
            let mut i = 0;
            while let Some(s) = written.get(i) {
                match s.as_str() {
                    "super" => supers += 1,
                    "self" => {}
                    _ => break,
                }
                i += 1;
            }
            for _ in 0..supers {
                here.pop();
            }
            rest = &written[i..];
        }
        _ => {}
    }
    here.extend(rest.iter().cloned());
    here
}

/// The spec crate's modules lib.rs re-exports at the harness's root
/// (`crate::case` is the spec crate's `case`).
fn spec_reexports(lib: &str) -> Vec<String> {
    let mut paths = Paths::default();
    paths.visit_file(&syn::parse_file(lib).expect("lib.rs parses"));
    paths
        .0
        .into_iter()
        .filter(|p| p.len() == 2 && p[0] == "pmem_lab_spec")
        .map(|p| p[1].clone())
        .collect()
}

/// What breaks the rule in `sources` (empty: it holds); `spec`: the spec
/// crate's modules as the harness's root re-exports them.
fn violations(sources: &[Source], spec: &[String]) -> Vec<String> {
    let modules: BTreeSet<Vec<String>> = sources.iter().map(|s| s.module.clone()).collect();
    let rank = |layer: &str| LAYERS.iter().position(|l| *l == layer);
    let mut bad = Vec::new();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in sources {
        let syntax = match syn::parse_file(&s.text) {
            Ok(f) => f,
            Err(e) => {
                bad.push(format!("{}: does not parse: {e}", s.file.display()));
                continue;
            }
        };
        let mut paths = Paths::default();
        paths.visit_file(&syntax);
        let from = node(&modules, &s.module);
        let from_rank = rank(&s.module[0]).expect("a layer");
        for written in paths.0 {
            let spec_crate = written[0] == "pmem_lab_spec";
            let target = resolve(&s.module, &written);
            let Some(top) = target.first() else { continue };
            if spec_crate || spec.contains(top) {
                if s.module[0] == "vm" && !SPEC_FOR_VM.contains(&top.as_str()) {
                    bad.push(format!(
                        "{}: the VM layer uses the case model's `{top}` ({})",
                        s.file.display(),
                        written.join("::")
                    ));
                }
                continue;
            }
            let Some(to_rank) = rank(top) else { continue };
            if to_rank > from_rank {
                bad.push(format!(
                    "{}: `{}` imports {} from the layer above ({} is below {top})",
                    s.file.display(),
                    s.module[0],
                    written.join("::"),
                    s.module[0]
                ));
            }
            let to = node(&modules, &target);
            if to != from {
                edges.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    bad.extend(
        cycles(&edges)
            .into_iter()
            .map(|c| format!("import cycle: {}", c.join(" -> "))),
    );
    bad
}

/// Each cycle of `edges` once, as a path that returns to its start.
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    fn dfs(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        found: &mut Vec<Vec<String>>,
    ) {
        if let Some(at) = stack.iter().position(|s| s == n) {
            let mut c = stack[at..].to_vec();
            c.push(n.to_string());
            found.push(c);
            return;
        }
        if done.contains(n) {
            return;
        }
        stack.push(n.to_string());
        for m in edges.get(n).into_iter().flatten() {
            dfs(m, edges, stack, done, found);
        }
        stack.pop();
        done.insert(n.to_string());
    }
    let mut found = Vec::new();
    let mut done = BTreeSet::new();
    for n in edges.keys() {
        dfs(n, edges, &mut Vec::new(), &mut done, &mut found);
    }
    found
}

#[test]
fn the_harness_keeps_its_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let sources = sources(&src);
    // Every module of the library is in a layer.
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let declared: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|l| l.split(';').next().unwrap())
        .collect();
    let mut layers = LAYERS.to_vec();
    layers.sort();
    let mut declared_sorted = declared.clone();
    declared_sorted.sort();
    assert_eq!(
        declared_sorted, layers,
        "lib.rs declares exactly the layers"
    );
    assert!(sources.len() > 30, "found only {} files", sources.len());
    let spec = spec_reexports(&lib);
    assert!(
        spec.iter().any(|m| m == "case"),
        "lib.rs re-exports the spec crate's modules: {spec:?}"
    );
    let bad = violations(&sources, &spec);
    assert!(
        bad.is_empty(),
        "the layering rule is broken:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_check_sees_upward_imports_cycles_and_cases_in_the_vm_layer() {
    let file = |path: &str, text: &str| Source {
        file: PathBuf::from(path),
        module: module_path(Path::new("src"), Path::new(path)),
        text: text.to_string(),
    };
    let sources = [
        file("src/vm/mod.rs", "pub mod launch;"),
        // Upward, and the cycle vm/launch -> boot/snap -> vm/launch.
        file("src/vm/launch.rs", "use crate::boot::snap::Saved;"),
        file(
            "src/boot/snap.rs",
            "fn f() { crate::vm::launch::start(); }\n\
             #[cfg(test)] mod tests { use crate::run::Anything; }",
        ),
        file(
            "src/vm/qmp.rs",
            "use crate::case::Case; use crate::size::ByteSize;",
        ),
        file(
            "src/guest/mod.rs",
            "use super::vm::Vm; // crate::run in a comment",
        ),
        file(
            "src/guest/setup.rs",
            "fn f() { let s = \"crate::run::x\"; }",
        ),
        file(
            "src/run/mod.rs",
            "use crate::{guest::setup, vm::{self, qmp}};",
        ),
    ];
    let spec = spec_reexports("pub use pmem_lab_spec::{case, size};");
    assert_eq!(spec, ["case", "size"]);
    let bad = violations(&sources, &spec);
    let has = |needle: &str| bad.iter().any(|b| b.contains(needle));
    assert!(
        has("src/vm/launch.rs: `vm` imports crate::boot::snap::Saved"),
        "{bad:#?}"
    );
    assert!(
        has("import cycle: boot/snap -> vm/launch -> boot/snap"),
        "{bad:#?}"
    );
    assert!(
        has("src/vm/qmp.rs: the VM layer uses the case model's `case`"),
        "{bad:#?}"
    );
    // Nothing else: tests, comments, strings, `super` and grouped imports
    // going down are all allowed.
    assert_eq!(bad.len(), 3, "{bad:#?}");
}
