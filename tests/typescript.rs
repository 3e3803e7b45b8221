//! TypeScript plugins: type stripping at load, `.ts` positions in errors and stacks, the
//! content cache, and reload of edited `.ts` files. Runs in thread and process modes (see
//! `common::builder`).

mod common;

use common::{PluginDir, engine};
use isola::{ErrorCode, Manager};
use serde_json::json;

fn ts_plugin(dir: &PluginDir, id: &str, main_ts: &str) -> std::path::PathBuf {
    let manifest = json!({"id": id, "name": id, "version": "1.0.0", "apiVersion": 1, "main": "main.ts"});
    dir.write(&format!("{id}/plugin.json"), &manifest.to_string());
    dir.write(&format!("{id}/main.ts"), main_ts);
    dir.path().join(id)
}

#[test]
fn the_bundled_typescript_plugin_runs() {
    let manager = Manager::new(engine());
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/inventory");
    let h = manager.load(root).unwrap_or_else(|e| panic!("{e}"));
    let added: u64 = h.call_blocking("add", &(json!({"sku": "nut", "name": "Nut", "quantity": 3}),)).unwrap();
    assert_eq!(added, 3);
    let _: u64 = h.call_blocking("add", &(json!({"sku": "nut", "name": "Nut", "quantity": 4}),)).unwrap();
    let left: u64 = h.call_blocking("take", &(json!({"sku": "nut", "n": 5}),)).unwrap();
    assert_eq!(left, 2);
    let report: serde_json::Value = h.call_blocking("report", ()).unwrap();
    // The enum compiled to a real object: `Level.Low` is the string "low".
    assert_eq!(report, json!({"total": 2, "low": ["nut"], "level": "low"}));
    let e = h.call_blocking::<_, u64>("take", &(json!({"sku": "bolt", "n": 1}),)).unwrap_err();
    assert_eq!(e.code, ErrorCode::JsError);
    let js = e.js.as_ref().unwrap();
    assert_eq!(js.file.as_deref(), Some("lib/stock.ts"), "{e}");
    assert_eq!(js.line, Some(23), "{e}");
}

#[test]
fn imports_type_only_imports_enums_and_classes_work() {
    let dir = PluginDir::new();
    dir.write(
        "p/shapes.mts",
        "export enum Kind { Circle, Square = 10, Named = \"named\" }\n\
         export interface Shape { kind: Kind; size: number }\n\
         export class Area {\n\
           constructor(private readonly scale: number = 1) {}\n\
           of(s: Shape): number { return s.kind === Kind.Circle ? 3 * s.size * s.size * this.scale : s.size * s.size * this.scale; }\n\
         }\n",
    );
    dir.write("p/only-types.ts", "export type Pair<T> = [T, T];\nexport interface Never { x: never }\n");
    dir.write("p/data.json", "{\"scale\": 2}");
    let path = ts_plugin(
        &dir,
        "p",
        "import type { Pair } from './only-types.ts';\n\
         import { type Shape, Kind, Area } from './shapes.mts';\n\
         import data from './data.json' with { type: 'json' };\n\
         const area = new Area(data.scale);\n\
         function twice<T>(x: T): Pair<T> { return [x, x]; }\n\
         export default {\n\
           area(size: number): number { const s: Shape = { kind: Kind.Square, size }; return area.of(s); },\n\
           kinds(): Record<string, unknown> { return { circle: Kind.Circle, square: Kind.Square, named: Kind.Named, back: Kind[10] }; },\n\
           twice: (x: string): Pair<string> => twice<string>(x),\n\
         };\n",
    );
    let manager = Manager::new(engine());
    let h = manager.load(path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(h.call_blocking::<_, f64>("area", &(3,)).unwrap(), 18.0);
    assert_eq!(
        h.call_blocking::<_, serde_json::Value>("kinds", &()).unwrap(),
        json!({"circle": 0, "square": 10, "named": "named", "back": "Square"})
    );
    assert_eq!(h.call_blocking::<_, Vec<String>>("twice", &("a",)).unwrap(), vec!["a", "a"]);
}

#[test]
fn a_syntax_error_is_load_failed_at_its_ts_line_and_column() {
    let dir = PluginDir::new();
    let path =
        ts_plugin(&dir, "p", "const ok: number = 1;\nconst broken: = 2;\nexport default { ok() { return ok; } };\n");
    let e = Manager::new(engine()).load(path).unwrap_err();
    assert_eq!(e.code, ErrorCode::LoadFailed, "{e}");
    assert_eq!(e.plugin.as_deref(), Some("p"));
    let js = e.js.as_ref().unwrap_or_else(|| panic!("no position: {e}"));
    assert_eq!(js.name, "SyntaxError");
    assert_eq!(js.file.as_deref(), Some("main.ts"));
    assert_eq!((js.line, js.column), (Some(2), Some(15)), "{e}");
    assert!(e.to_string().contains("main.ts:2:15"), "{e}");
}

#[test]
fn a_syntax_error_in_an_imported_ts_file_names_that_file() {
    let dir = PluginDir::new();
    dir.write("p/lib/util.ts", "export function f(): number {\n  return 1\n}\nexport enum {\n");
    let path = ts_plugin(&dir, "p", "import { f } from './lib/util.ts';\nexport default { f };\n");
    let e = Manager::new(engine()).load(path).unwrap_err();
    assert_eq!(e.code, ErrorCode::LoadFailed, "{e}");
    let js = e.js.as_ref().unwrap_or_else(|| panic!("no position: {e}"));
    assert_eq!(js.file.as_deref(), Some("lib/util.ts"), "{e}");
    assert_eq!(js.line, Some(4), "{e}");
}

#[test]
fn a_runtime_error_points_at_the_ts_line_in_its_position_and_stack() {
    let dir = PluginDir::new();
    // Types on the lines before the throw shift the JavaScript lines and columns: only a
    // source map gets the `.ts` position right.
    let path = ts_plugin(
        &dir,
        "p",
        "interface Opts {\n  a: number;\n  b: string;\n}\n\
         type Unused = Opts | null;\n\
         function check(o: Opts): number {\n\
           if (o.a > 1) {\n\
             throw new TypeError(`a is ${o.a}`);\n\
           }\n\
           return o.a;\n\
         }\n\
         export default {\n\
           run(a: number): number { return check({ a, b: 'x' } as Opts); },\n\
         };\n",
    );
    let manager = Manager::new(engine());
    let h = manager.load(path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(h.call_blocking::<_, f64>("run", &(1,)).unwrap(), 1.0);
    let e = h.call_blocking::<_, f64>("run", &(5,)).unwrap_err();
    assert_eq!(e.code, ErrorCode::JsError);
    let js = e.js.as_ref().unwrap();
    assert_eq!(js.name, "TypeError");
    assert_eq!(js.file.as_deref(), Some("main.ts"), "{e}");
    assert_eq!(js.line, Some(8), "{e}");
    // `\n\` in the literal drops the indentation: `throw new` starts the line, V8 points at `new`.
    assert_eq!(js.column, Some(7), "{e}");
    let stack = js.stack.as_deref().unwrap();
    assert!(stack.contains("main.ts:8:7"), "{stack}");
    // The caller's frame is mapped too.
    assert!(stack.contains("main.ts:13:"), "{stack}");
    assert!(!stack.contains(".js:"), "{stack}");
}

#[test]
fn an_edited_ts_file_is_picked_up_by_reload() {
    let dir = PluginDir::new();
    let path = ts_plugin(&dir, "p", "const n: number = 1;\nexport default { n(): number { return n; } };\n");
    let manager = Manager::new(engine());
    let h = manager.load(&path).unwrap();
    assert_eq!(h.call_blocking::<_, u32>("n", &()).unwrap(), 1);
    dir.write("p/main.ts", "const n: number = 2;\nexport default { n(): number { return n; } };\n");
    manager.reload("p").unwrap();
    assert_eq!(h.call_blocking::<_, u32>("n", &()).unwrap(), 2);
    // A broken edit keeps the last good version.
    dir.write("p/main.ts", "const n: number = ;\n");
    let e = manager.reload("p").unwrap_err();
    assert_eq!(e.code, ErrorCode::LoadFailed);
    assert_eq!(h.call_blocking::<_, u32>("n", &()).unwrap(), 2);
}

#[test]
fn reloading_unchanged_files_transpiles_nothing() {
    if common::process_mode() {
        // The cache's counters are per process; in process mode the children transpile.
        return;
    }
    // Alone in a process of its own, so that no other test transpiles meanwhile.
    common::in_child("reloading_unchanged_files_transpiles_nothing", || {
        let dir = PluginDir::new();
        dir.write("p/lib.ts", "export const marker: string = 'm';\n");
        let path =
            ts_plugin(&dir, "p", "import { marker } from './lib.ts';\nexport default { m: (): string => marker };\n");
        let manager = Manager::new(engine());
        let h = manager.load(&path).unwrap();
        assert_eq!(h.call_blocking::<_, String>("m", &()).unwrap(), "m");
        let before = isola::typescript::cache_stats();
        manager.reload("p").unwrap();
        manager.reload("p").unwrap();
        assert_eq!(h.call_blocking::<_, String>("m", &()).unwrap(), "m");
        let after = isola::typescript::cache_stats();
        assert_eq!(after.transpiled, before.transpiled, "{before:?} -> {after:?}");
        // Two files, two reloads.
        assert_eq!(after.hits, before.hits + 4, "{before:?} -> {after:?}");
        // An edit is transpiled again (once: the other file is unchanged).
        dir.write("p/lib.ts", "export const marker: string = 'n';\n");
        manager.reload("p").unwrap();
        assert_eq!(h.call_blocking::<_, String>("m", &()).unwrap(), "n");
        assert_eq!(isola::typescript::cache_stats().transpiled, after.transpiled + 1);
    });
}

#[test]
fn main_must_be_javascript_or_typescript() {
    let dir = PluginDir::new();
    let manifest = json!({"id": "p", "name": "p", "version": "1.0.0", "apiVersion": 1, "main": "main.tsx"});
    let path = dir.module_with_manifest("p", &manifest.to_string(), "export default {};");
    let e = Manager::new(engine()).load(path).unwrap_err();
    assert_eq!(e.code, ErrorCode::ManifestInvalid, "{e}");
    assert!(e.to_string().contains(".ts"), "{e}");
}
