//! Loading plugins: both forms, manifests, syntax errors, imports, broken neighbours.

mod common;

use common::{PluginDir, engine};
use isola::manifest::Severity;
use isola::{ErrorCode, Manager, PluginStatus};
use serde_json::json;

#[test]
fn loads_a_folder_plugin_and_a_script_plugin() {
    let dir = PluginDir::new();
    dir.module("mod", "export default { hi(n) { return `hi ${n}`; }, other() {} };");
    dir.script("scr", "var plugin = { twice(x) { return x * 2; } };");
    let m = Manager::new(engine());
    let report = m.load_dir(dir.path()).unwrap();
    assert_eq!(report.loaded, vec!["mod", "scr"]);
    assert!(report.failed.is_empty());

    let list = m.list();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].hooks, vec!["hi", "other"]);
    assert_eq!(list[0].version, "1.0.0");
    assert_eq!(list[1].hooks, vec!["twice"]);
    assert!(list.iter().all(|p| p.status == PluginStatus::Ready));

    let hi: String = m.handle("mod").unwrap().call_blocking("hi", ("Ada",)).unwrap();
    assert_eq!(hi, "hi Ada");
    let twice: i64 = m.handle("scr").unwrap().call_blocking("twice", (21,)).unwrap();
    assert_eq!(twice, 42);
}

#[test]
fn bundled_example_plugins_load_and_greet() {
    let m = Manager::new(engine());
    let report = m.load_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/plugins")).unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let greeting: String = m.handle("greeter").unwrap().call_blocking("greet", ("Ada",)).unwrap();
    assert_eq!(greeting, "Hello, Ada! App version: 9.9.9");
    let bye: String = m.handle("greeter").unwrap().call_blocking("farewell", ("Ada",)).unwrap();
    assert_eq!(bye, "Goodbye, Ada!");
}

#[test]
fn manifest_problems_are_reported_all_at_once() {
    let dir = PluginDir::new();
    dir.module_with_manifest(
        "bad",
        r#"{"id": "bad", "name": 5, "apiVersion": "one", "limits": {"heapMb": -1}, "colour": "red"}"#,
        "export default {};",
    );
    let m = Manager::new(engine());
    let report = m.load_dir(dir.path()).unwrap();
    assert_eq!(report.failed.len(), 1);
    let e = &report.failed[0];
    assert_eq!(e.code, ErrorCode::ManifestInvalid);
    assert_eq!(e.plugin.as_deref(), Some("bad"));
    let paths: Vec<&str> =
        e.diagnostics.iter().filter(|d| d.severity == Severity::Error).map(|d| d.path.as_str()).collect();
    for expected in ["$.name", "$.version", "$.apiVersion", "$.limits.heapMb"] {
        assert!(paths.contains(&expected), "missing diagnostic for {expected}: {paths:?}");
    }
    let unknown = e.diagnostics.iter().find(|d| d.path == "$.colour").expect("unknown field reported");
    assert_eq!(unknown.severity, Severity::Warning);
    assert!(e.to_string().contains("plugin.json"), "{e}");

    // The failed plugin stays listed, with its error.
    let list = m.list();
    assert_eq!(list[0].status, PluginStatus::Failed);
    assert_eq!(list[0].error.as_ref().unwrap().code, ErrorCode::ManifestInvalid);
    // Calling it answers with why it is not running.
    let err = m.handle("bad").unwrap().call_blocking::<_, ()>("x", ()).unwrap_err();
    assert_eq!(err.code, ErrorCode::ManifestInvalid);
}

#[test]
fn unknown_fields_are_only_warnings() {
    let dir = PluginDir::new();
    dir.module_with_manifest(
        "warn",
        &json!({"id": "warn", "name": "W", "version": "1.0.0", "apiVersion": 1, "homepage": "x"}).to_string(),
        "export default { ok() { return true; } };",
    );
    let m = Manager::new(engine());
    m.load_dir(dir.path()).unwrap();
    let info = &m.list()[0];
    assert_eq!(info.status, PluginStatus::Ready);
    assert_eq!(info.diagnostics.len(), 1);
    assert_eq!(info.diagnostics[0].severity, Severity::Warning);
    assert_eq!(info.diagnostics[0].code, "unknown_field");
}

#[test]
fn unsupported_api_version_names_the_supported_one() {
    let dir = PluginDir::new();
    let path = dir.module_with_manifest(
        "future",
        &json!({"id": "future", "name": "F", "version": "1.0.0", "apiVersion": 7}).to_string(),
        "export default {};",
    );
    let e = Manager::new(engine()).load(path).unwrap_err();
    assert_eq!(e.code, ErrorCode::ManifestInvalid);
    let d = e.diagnostics.iter().find(|d| d.path == "$.apiVersion").unwrap();
    assert_eq!(d.code, "unsupported_api_version");
    assert!(d.message.contains('1'), "{}", d.message);
}

#[test]
fn syntax_error_is_load_failed_with_file_and_line() {
    let dir = PluginDir::new();
    let path = dir.module("syn", "export default {\n  ok() { return 1; },\n  broken( { \n};\n");
    let e = Manager::new(engine()).load(path).unwrap_err();
    assert_eq!(e.code, ErrorCode::LoadFailed);
    assert_eq!(e.plugin.as_deref(), Some("syn"));
    let js = e.js.as_ref().expect("JS details");
    assert_eq!(js.name, "SyntaxError");
    assert_eq!(js.file.as_deref(), Some("main.js"), "{e}");
    assert!(js.line.is_some(), "{e}");
}

#[test]
fn syntax_error_in_a_script_plugin_names_the_file() {
    let dir = PluginDir::new();
    let path = dir.script("scr", "var plugin = {\n  a() { return 1 }\n  b() {}\n};");
    let e = Manager::new(engine()).load(path).unwrap_err();
    assert_eq!(e.code, ErrorCode::LoadFailed);
    let js = e.js.as_ref().expect("JS details");
    assert_eq!(js.name, "SyntaxError");
    assert!(e.to_string().contains("scr.js"), "{e}");
}

#[test]
fn top_level_throw_is_load_failed_with_location() {
    let dir = PluginDir::new();
    let path = dir.module("thrower", "const x = 1;\nthrow new Error('not today');\nexport default {};");
    let e = Manager::new(engine()).load(path).unwrap_err();
    assert_eq!(e.code, ErrorCode::LoadFailed);
    assert!(e.message.contains("not today"), "{e}");
    let js = e.js.unwrap();
    assert_eq!((js.file.as_deref(), js.line), (Some("main.js"), Some(2)));
}

#[test]
fn missing_default_export_and_missing_plugin_global_are_explained() {
    let dir = PluginDir::new();
    let m = Manager::new(engine());
    let e = m.load(dir.module("nodefault", "export const x = 1;")).unwrap_err();
    assert_eq!(e.code, ErrorCode::LoadFailed);
    assert!(e.message.contains("default export"), "{e}");
    let e = m.load(dir.script("noglobal", "var notPlugin = {};")).unwrap_err();
    assert!(e.message.contains("global `plugin`"), "{e}");
}

#[test]
fn one_broken_plugin_does_not_stop_the_others() {
    let dir = PluginDir::new();
    dir.module("a", "export default { ok() { return 'a'; } };");
    dir.module("b", "export default { ok( };");
    dir.write("c/plugin.json", "{ not json");
    dir.write("c/main.js", "export default {};");
    dir.script("d", "var plugin = { ok() { return 'd'; } };");
    dir.write("notes.txt", "not a plugin");
    let m = Manager::new(engine());
    let report = m.load_dir(dir.path()).unwrap();
    assert_eq!(report.loaded, vec!["a", "d"]);
    let mut codes: Vec<_> = report.failed.iter().map(|e| (e.plugin.clone().unwrap(), e.code)).collect();
    codes.sort();
    assert_eq!(codes, vec![("b".into(), ErrorCode::LoadFailed), ("c".into(), ErrorCode::ManifestInvalid)]);
    assert_eq!(m.handle("d").unwrap().call_blocking::<_, String>("ok", ()).unwrap(), "d");
}

#[test]
fn imports_inside_the_folder_work() {
    let dir = PluginDir::new();
    dir.write("p/lib/util.js", "export const twice = (x) => x * 2;");
    dir.write("p/data.js", "import { twice } from './lib/util.js'; export const n = twice(21);");
    let path = dir.module("p", "import { n } from './data.js';\nexport default { n() { return n; } };");
    let m = Manager::new(engine());
    let h = m.load(path).unwrap();
    assert_eq!(h.call_blocking::<_, i64>("n", ()).unwrap(), 42);
}

#[test]
fn imports_outside_the_folder_are_refused() {
    let dir = PluginDir::new();
    dir.write("secret.js", "export const secret = 'leaked';");
    let cases = [
        "../secret.js",
        "/etc/passwd",
        "file:///etc/passwd",
        "http://example.com/x.js",
        "node:fs",
        "npm:lodash",
        "lodash",
    ];
    let m = Manager::new(engine());
    for (i, spec) in cases.iter().enumerate() {
        let id = format!("imp{i}");
        let path = dir.module(&id, &format!("import * as x from '{spec}';\nexport default {{ x() {{ return x; }} }};"));
        let e = m.load(path).expect_err(spec);
        assert_eq!(e.code, ErrorCode::LoadFailed, "{spec}: {e}");
        assert_eq!(e.plugin.as_deref(), Some(id.as_str()));
        assert!(!e.to_string().contains("leaked"));
    }
}

#[test]
fn symlink_out_of_the_folder_is_refused() {
    let dir = PluginDir::new();
    let outside = dir.write("outside/secret.js", "export const secret = 'leaked';");
    let path = dir.module("p", "import { secret } from './link.js';\nexport default { s() { return secret; } };");
    std::os::unix::fs::symlink(&outside, path.join("link.js")).unwrap();
    let e = Manager::new(engine()).load(path).unwrap_err();
    assert_eq!(e.code, ErrorCode::LoadFailed);
    assert!(e.message.contains("outside the plugin folder"), "{e}");
}

#[test]
fn dynamic_import_outside_the_folder_is_refused_at_call_time() {
    let (_d, _m, h) = common::load_module(
        "export default { async peek() { try { await import('../secret.js'); return 'leaked'; } catch (e) { return e.message; } } };",
    );
    let msg: String = h.call_blocking("peek", ()).unwrap();
    assert!(msg.contains("refused") || msg.contains("cannot load"), "{msg}");
}

#[test]
fn a_plugin_cannot_claim_another_plugins_id() {
    // Storage and permission policy are keyed by id: `a-evil` may not call itself `notes`.
    let dir = PluginDir::new();
    dir.module_with_manifest(
        "a-evil",
        &json!({"id": "notes", "name": "dup", "version": "1.0.0", "apiVersion": 1}).to_string(),
        "export default {};",
    );
    dir.module("notes", "export default {};");
    let m = Manager::new(engine());
    let report = m.load_dir(dir.path()).unwrap();
    assert_eq!(report.loaded, vec!["notes"]);
    assert_eq!(report.failed.len(), 1);
    let e = &report.failed[0];
    assert_eq!((e.code, e.plugin.as_deref()), (ErrorCode::ManifestInvalid, Some("a-evil")));
    assert!(e.diagnostics[0].message.contains("must match the plugin's folder name"), "{e}");
}

#[test]
fn duplicate_ids_are_refused() {
    let dir = PluginDir::new();
    dir.module("same", "export default { v() { return 'folder'; } };");
    dir.script("same", "var plugin = { v() { return 'script'; } };");
    let m = Manager::new(engine());
    let report = m.load_dir(dir.path()).unwrap();
    assert_eq!(report.loaded.len(), 1);
    assert_eq!(report.failed.len(), 1);
    assert!(report.failed[0].message.contains("already loaded"), "{}", report.failed[0]);
}

#[test]
fn a_script_plugin_cannot_import_its_neighbours_files() {
    let dir = PluginDir::new();
    dir.write("notes/secret.js", "export const secret = 'leaked';");
    dir.write("notes/data.json", r#"{"secret": "leaked"}"#);
    let m = Manager::new(engine());
    let h = m
        .load(dir.script(
            "nosy",
            "var plugin = { async peek(spec) { try { const m = await import(spec); return JSON.stringify(m); } catch (e) { return e.message; } } };",
        ))
        .unwrap();
    for spec in ["./notes/secret.js", "./notes/data.json", "./nosy.js"] {
        let out: String = h.call_blocking("peek", (spec,)).unwrap();
        assert!(!out.contains("leaked"), "{spec}: {out}");
    }
}

#[test]
fn refusals_do_not_reveal_whether_a_file_exists() {
    let dir = PluginDir::new();
    let m = Manager::new(engine());
    let h = m
        .load(dir.module(
            "prober",
            "export default { async probe(spec) { try { await import(spec); return 'imported'; } catch (e) { return e.message.replace(spec, 'X'); } } };",
        ))
        .unwrap();
    let exists: String = h.call_blocking("probe", ("/etc/passwd",)).unwrap();
    let missing: String = h.call_blocking("probe", ("/etc/no-such-file-here",)).unwrap();
    assert_eq!(exists, missing);
    assert!(exists.contains("outside the plugin folder"), "{exists}");
}

#[test]
fn command_diagnostics_never_move_the_manifests_own_id_problem() {
    // The manifest's own id is invalid *and* a command lacks its id: each problem keeps its path.
    let problems = isola::manifest::Manifest::parse(
        &json!({
            "id": "not an id!", "name": "n", "version": "1", "apiVersion": 1,
            "commands": [{"title": "Say hi", "hook": "hi"}]
        })
        .to_string(),
    )
    .unwrap_err();
    let paths: Vec<&str> = problems.iter().map(|d| d.path.as_str()).collect();
    assert!(paths.contains(&"$.id"), "{paths:?}");
    assert!(paths.contains(&"$.commands[0].id"), "{paths:?}");
    let own = problems.iter().find(|d| d.path == "$.id").unwrap();
    assert_eq!(own.code, "invalid_value", "{own}");
}

#[test]
fn a_broken_manifest_cannot_take_another_plugins_place() {
    let dir = PluginDir::new();
    // `victim` is a real plugin that fails to load (so it is not running)...
    let victim = dir.module("victim", "export default { hi() { return 1; } ");
    // ...and `impostor`'s broken manifest claims victim's id.
    dir.module_with_manifest("impostor", r#"{"id": "victim", "apiVersion": 1}"#, "export default {};");
    let m = Manager::new(engine());
    let report = m.load_dir(dir.path()).unwrap();
    let mut failed: Vec<(String, ErrorCode)> =
        report.failed.iter().map(|e| (e.plugin.clone().unwrap(), e.code)).collect();
    failed.sort();
    assert_eq!(
        failed,
        vec![("impostor".to_string(), ErrorCode::ManifestInvalid), ("victim".to_string(), ErrorCode::LoadFailed)]
    );
    let list = m.list();
    let v = list.iter().find(|p| p.id == "victim").expect("victim still listed");
    assert_eq!(v.location, std::fs::canonicalize(&victim).unwrap(), "victim's entry was not replaced");
    assert_eq!(v.error.as_ref().unwrap().code, ErrorCode::LoadFailed, "victim keeps its own error");
    let i = list.iter().find(|p| p.id == "impostor").expect("the impostor is listed under its folder");
    assert_eq!(i.error.as_ref().unwrap().code, ErrorCode::ManifestInvalid);
}

#[test]
fn handles_taken_while_a_plugin_failed_reach_it_once_it_loads() {
    let dir = PluginDir::new();
    // Fails at evaluation...
    let path = dir.module("p", "export default { hi() { return 'hi'; } ");
    let m = Manager::new(engine());
    assert_eq!(m.load(&path).unwrap_err().code, ErrorCode::LoadFailed);
    let early = m.handle("p").unwrap();
    assert_eq!(early.call_blocking::<_, String>("hi", ()).unwrap_err().code, ErrorCode::LoadFailed);
    // ...is fixed and loaded again: the handle taken before now reaches it.
    std::fs::write(path.join("main.js"), "export default { hi() { return 'hi'; } };").unwrap();
    m.load(&path).unwrap();
    assert_eq!(early.call_blocking::<_, String>("hi", ()).unwrap(), "hi");

    // The same when not even its manifest could be read at first.
    let q = dir.module_with_manifest("q", "{ not json", "export default { hi() { return 'q'; } };");
    assert_eq!(m.load(&q).unwrap_err().code, ErrorCode::ManifestInvalid);
    let early = m.handle("q").unwrap();
    std::fs::write(q.join("plugin.json"), json!({"id": "q", "name": "q", "version": "1", "apiVersion": 1}).to_string())
        .unwrap();
    m.load(&q).unwrap();
    assert_eq!(early.call_blocking::<_, String>("hi", ()).unwrap(), "q");
    assert_eq!(early.status(), PluginStatus::Ready);
}
