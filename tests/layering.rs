//! The crate's modules depend downwards only: no import cycles between modules of `src/`, and
//! the V8 layer (`runtime/`) and the plugin's thread (`worker.rs`) know nothing of the manager
//! and its parts.
//!
//! How: every `crate::…` and `super::…` path in `src/` (outside the CLI, which is its own
//! binary crate) is read as an edge from the file's module to the module it names; paths to a
//! module's own ancestors or descendants (a module and its children) are not dependencies
//! between modules. Items the crate root re-exports (`crate::HostApi`) count as edges to the
//! module that defines them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The module a source file is (`src/runtime/ops.rs` → `runtime::ops`, `src/storage/mod.rs`
/// → `storage`); `None` for the crate root.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    if parts == ["lib"] { None } else { Some(parts.join("::")) }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Identifiers, `::` and braces: just enough of Rust's tokens to follow paths.
fn tokens(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = code.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_alphanumeric() || c == '_' {
            let mut id = c.to_string();
            while let Some(&n) = chars.peek().filter(|n| n.is_alphanumeric() || **n == '_') {
                id.push(n);
                chars.next();
            }
            out.push(id);
        } else if c == ':' && chars.peek() == Some(&':') {
            chars.next();
            out.push("::".into());
        } else if c == '/' && chars.peek() == Some(&'/') {
            // Comments (doc comments included) are not dependencies.
            for n in chars.by_ref() {
                if n == '\n' {
                    break;
                }
            }
        } else if c == '"' {
            let mut escaped = false;
            for n in chars.by_ref() {
                if n == '"' && !escaped {
                    break;
                }
                escaped = n == '\\' && !escaped;
            }
        } else if "{},;".contains(c) {
            out.push(c.to_string());
        }
    }
    out
}

/// Every path that starts at `crate` or `super`, as segment lists from the crate root
/// (brace groups in `use` expanded).
fn paths(module: &[String], toks: &[String]) -> Vec<Vec<String>> {
    fn walk(prefix: Vec<String>, toks: &[String], mut i: usize, out: &mut Vec<Vec<String>>) -> usize {
        let mut path = prefix.clone();
        while i < toks.len() {
            let t = &toks[i];
            if t == "::" {
                i += 1;
            } else if t == "{" {
                i += 1;
                loop {
                    i = walk(path.clone(), toks, i, out);
                    match toks.get(i).map(String::as_str) {
                        Some(",") => i += 1,
                        Some("}") => {
                            i += 1;
                            break;
                        }
                        _ => break,
                    }
                }
                return i;
            } else if t.chars().all(|c| c.is_alphanumeric() || c == '_') && toks.get(i + 1).is_some_and(|n| n == "::") {
                path.push(t.clone());
                i += 1;
            } else {
                if t.chars().all(|c| c.is_alphanumeric() || c == '_') && t != "self" {
                    path.push(t.clone());
                }
                i += 1;
                break;
            }
        }
        out.push(path);
        i
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let start = match toks[i].as_str() {
            "crate" => Some(Vec::new()),
            "super" => Some(module[..module.len().saturating_sub(1)].to_vec()),
            _ => None,
        };
        match start {
            Some(prefix) if toks.get(i + 1).is_some_and(|t| t == "::") => {
                let mut prefix = prefix;
                let mut j = i + 2;
                // `super::super::…`
                while toks.get(j).is_some_and(|t| t == "super") {
                    prefix.pop();
                    j += 2;
                }
                walk(prefix, toks, j, &mut out);
                i = j;
            }
            _ => i += 1,
        }
    }
    out
}

struct Crate {
    /// module → modules it depends on.
    deps: BTreeMap<String, BTreeSet<String>>,
}

fn read_crate() -> Crate {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    // The CLI is the `isola` binary, a separate crate that uses the library's public API.
    files.retain(|f| !f.starts_with(src.join("cli")) && f.file_name().unwrap() != "main.rs");
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(&src, f)).collect();
    // Items the root re-exports: `pub use engine::{Engine, ...}` → Engine lives in `engine`.
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let mut reexports = BTreeMap::new();
    for p in paths(&[], &tokens(&lib.replace("pub use ", "pub use crate::"))) {
        if p.len() >= 2 {
            reexports.insert(p.last().unwrap().clone(), p[..p.len() - 1].join("::"));
        }
    }
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let Some(me) = module_of(&src, f) else { continue };
        let me_parts: Vec<String> = me.split("::").map(str::to_owned).collect();
        let code = std::fs::read_to_string(f).unwrap();
        for p in paths(&me_parts, &tokens(&code)) {
            // The longest prefix of the path that is a module (or a root re-export).
            let target = (1..=p.len())
                .rev()
                .map(|n| p[..n].join("::"))
                .find(|m| modules.contains(m))
                .or_else(|| p.first().and_then(|first| reexports.get(first).cloned()));
            let Some(target) = target else { continue };
            let related =
                target == me || me.starts_with(&format!("{target}::")) || target.starts_with(&format!("{me}::"));
            if !related {
                deps.entry(me.clone()).or_default().insert(target);
            }
        }
        deps.entry(me).or_default();
    }
    Crate { deps }
}

/// A cycle in the dependency graph, if there is one.
fn find_cycle(deps: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        m: &str,
        deps: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(m) {
            Some(2) => return None,
            Some(1) => {
                let from = stack.iter().position(|s| s == m).unwrap();
                let mut cycle = stack[from..].to_vec();
                cycle.push(m.to_owned());
                return Some(cycle);
            }
            _ => {}
        }
        state.insert(m.to_owned(), 1);
        stack.push(m.to_owned());
        for d in deps.get(m).into_iter().flatten() {
            if let Some(c) = visit(d, deps, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(m.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in deps.keys() {
        if let Some(c) = visit(m, deps, &mut state, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

#[test]
fn the_checker_sees_dependencies_and_cycles() {
    // The parser follows `use` groups, `super::` and inline paths...
    let toks = tokens(
        "use crate::{engine::Engine, error::{Error, Result}};\nuse super::peers::Peers;\nlet x = crate::host::check_name(y); // crate::manager",
    );
    let got = paths(&["runtime".into(), "ops".into()], &toks);
    let got: Vec<String> = got.iter().map(|p| p.join("::")).collect();
    assert!(got.contains(&"engine::Engine".into()), "{got:?}");
    assert!(got.contains(&"error::Error".into()) && got.contains(&"error::Result".into()), "{got:?}");
    assert!(got.contains(&"runtime::peers::Peers".into()), "{got:?}");
    assert!(got.contains(&"host::check_name".into()), "{got:?}");
    assert!(!got.iter().any(|p| p.starts_with("manager")), "comments are not dependencies: {got:?}");
    // ...and the cycle search finds a cycle when there is one.
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    deps.entry("a".into()).or_default().insert("b".into());
    deps.entry("b".into()).or_default().insert("c".into());
    assert_eq!(find_cycle(&deps), None);
    deps.entry("c".into()).or_default().insert("a".into());
    assert_eq!(find_cycle(&deps), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
}

#[test]
fn modules_of_src_import_each_other_without_cycles() {
    let krate = read_crate();
    // The check saw the crate (a broken parser would find no edges and no cycles).
    assert!(krate.deps.len() >= 20, "{:?}", krate.deps.keys());
    assert!(krate.deps["manager"].contains("registry"), "{:?}", krate.deps["manager"]);
    assert!(krate.deps["runtime::isolate"].contains("runtime::ops"), "{:?}", krate.deps["runtime::isolate"]);
    if let Some(cycle) = find_cycle(&krate.deps) {
        panic!("import cycle between modules of src/: {}", cycle.join(" → "));
    }
}

#[test]
fn the_runtime_and_the_plugin_thread_know_nothing_of_the_manager() {
    let krate = read_crate();
    let above = ["manager", "registry", "dispatch", "watch", "links", "waits"];
    for (m, deps) in &krate.deps {
        if m == "worker" || m.starts_with("runtime") {
            let bad: Vec<&String> = deps.iter().filter(|d| above.contains(&d.as_str())).collect();
            assert!(bad.is_empty(), "{m} depends on {bad:?}, which sit above it");
        }
    }
    // And the bottom of the crate imports nothing from it.
    assert!(krate.deps["error"].is_empty(), "error.rs imports {:?}", krate.deps["error"]);
}
