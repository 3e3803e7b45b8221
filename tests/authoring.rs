//! Plugin authoring: `isola.d.ts` from the host API (checked by the real TypeScript compiler),
//! `isola types`, and `isola new` (its output loads, runs and is picked up by `isola dev`).

mod common;

use std::path::{Path, PathBuf};

use common::PluginDir;
use isola::HostApi;
use serde_json::json;

fn isola(args: &[&str], cwd: &Path) -> (bool, String, String) {
    let out = common::isola_command().args(args).current_dir(cwd).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn declarations_type_the_host_as_described() {
    let host = HostApi::new()
        .func("log", |(_m,): (String,)| Ok(()))
        .describe("log", "(message: string) => void", "Writes a line to the log.")
        .async_func("lookup", |(k,): (String,)| async move { Ok(k) })
        .describe("lookup", "(key: string) => Promise<string>", "Looks a key up.")
        .requires("lookup", "keys")
        .func("loose", |(): ()| Ok(1))
        .async_func("looseAsync", |(): ()| async move { Ok(1) })
        .value("limits", json!({"max": 3, "names": ["a", "b"], "nested": {"on": true, "odd key": null}}))
        .value("secret", json!("s"))
        .requires("secret", "secrets");
    let dts = isola::typings::declarations(&host);
    assert!(dts.contains("/** Writes a line to the log. */\n  readonly log: (message: string) => void;"), "{dts}");
    assert!(dts.contains("readonly lookup: (key: string) => Promise<string>;"), "{dts}");
    assert!(dts.contains("Needs the permission `keys`"), "{dts}");
    assert!(dts.contains("readonly loose: (...args: any[]) => unknown;"), "{dts}");
    assert!(dts.contains("readonly looseAsync: (...args: any[]) => Promise<unknown>;"), "{dts}");
    assert!(
        dts.contains(
            "readonly limits: { readonly max: number; readonly names: readonly string[]; readonly nested: { readonly on: boolean; readonly \"odd key\": null } };"
        ),
        "{dts}"
    );
    assert!(dts.contains("Needs the permission `secrets` in the plugin's manifest (without it: absent)"), "{dts}");
    // isola's own services, the web globals that exist, and not those that do not.
    for part in [
        "readonly storage:",
        "readonly events:",
        "readonly plugins:",
        "readonly signal: AbortSignal",
        "interface Plugin",
        "declare var console",
        "declare class URL",
        "declare function setTimeout",
    ] {
        assert!(dts.contains(part), "{part} missing:\n{dts}");
    }
    assert!(!dts.contains("fetch(") && !dts.contains("document"), "{dts}");
}

#[test]
#[should_panic(expected = "no host item `nope` to describe")]
fn describing_an_unknown_item_panics() {
    let _ = HostApi::new().describe("nope", "() => void", "");
}

#[test]
fn isola_types_writes_the_demo_hosts_declarations() {
    let dir = PluginDir::new();
    let (ok, out, err) = isola(&["types", "."], dir.path());
    assert!(ok, "{out}{err}");
    let dts = std::fs::read_to_string(dir.path().join("isola.d.ts")).unwrap();
    assert!(
        dts.contains("readonly fetchUser: (id: number) => Promise<{ id: number; name: string; city: string }>;"),
        "{dts}"
    );
    assert!(dts.contains("Needs the permission `users`"), "{dts}");
    let (ok, printed, _) = isola(&["types", "--stdout"], dir.path());
    assert!(ok);
    assert_eq!(printed, dts);
}

#[test]
fn isola_new_writes_plugins_that_run() {
    let dir = PluginDir::new();
    for (name, flag, main) in [("hello", Some("--ts"), "main.ts"), ("plain", None, "main.js")] {
        let mut args = vec!["new", name, "."];
        args.extend(flag);
        let (ok, out, err) = isola(&args, dir.path());
        assert!(ok, "{out}{err}");
        assert!(out.contains("isola dev ."), "prints the next command: {out}");
        for file in ["plugin.json", main, "isola.d.ts", "tsconfig.json"] {
            assert!(dir.path().join(name).join(file).is_file(), "{name}/{file} missing");
        }
        let (ok, out, err) = isola(&["call", ".", name, "hello", "Ada"], dir.path());
        assert!(ok, "{out}{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v, json!({"text": "Hello, Ada!", "count": 1}));
    }
    // Nothing is overwritten, and a bad id is refused with the reason.
    let (ok, _, err) = isola(&["new", "hello", "."], dir.path());
    assert!(!ok && err.contains("already exists"), "{err}");
    let (ok, _, err) = isola(&["new", "Bad Name", "."], dir.path());
    assert!(!ok && err.contains("cannot be a plugin id"), "{err}");
}

#[test]
fn isola_dev_picks_up_a_new_plugin() {
    let dir = PluginDir::new();
    let mut dev = common::dev::DevProcess::start(dir.path(), &[]);
    dev.wait_for("watching");
    let (ok, out, err) = isola(&["new", "fresh", "--ts", "."], dir.path());
    assert!(ok, "{out}{err}");
    dev.wait_for("[loaded] fresh");
    dev.type_line("fresh.hello(\"Dev\")");
    dev.wait_for("Hello, Dev!");
    assert!(dev.finish());
}

/// The TypeScript compiler, installed from the npm registry into the target directory once.
fn tsc() -> PathBuf {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join("tsc");
    let bin = target.join("node_modules/.bin/tsc");
    if !bin.is_file() {
        std::fs::create_dir_all(&target).unwrap();
        let status = std::process::Command::new("npm")
            .args(["install", "--no-save", "--no-audit", "--no-fund", "--prefix"])
            .arg(&target)
            .arg("typescript@5.9.3")
            .status()
            .expect("npm is needed to run the TypeScript compiler in this test");
        assert!(status.success(), "npm could not install typescript");
    }
    bin
}

fn compile(dir: &Path) -> (bool, String) {
    let out = std::process::Command::new(tsc()).args(["--noEmit", "-p", "."]).current_dir(dir).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn the_typescript_compiler_accepts_the_example_and_refuses_misuse() {
    let dir = PluginDir::new();
    // `isola new --ts` for the tsconfig.json; the bundled example beside it.
    let (ok, out, err) = isola(&["new", "scratch", "--ts", "."], dir.path());
    assert!(ok, "{out}{err}");
    let (ok, errors) = compile(&dir.path().join("scratch"));
    assert!(ok, "the template does not compile:\n{errors}");

    let example = dir.path().join("inventory");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/inventory");
    for file in ["plugin.json", "main.ts", "lib/stock.ts", "lib/types.ts"] {
        let to = example.join(file);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(src.join(file), to).unwrap();
    }
    std::fs::copy(dir.path().join("scratch/tsconfig.json"), example.join("tsconfig.json")).unwrap();
    let (ok, out, err) = isola(&["types", "inventory"], dir.path());
    assert!(ok, "{out}{err}");
    let (ok, errors) = compile(&example);
    assert!(ok, "plugins/inventory does not compile against isola.d.ts:\n{errors}");

    // The declarations are precise enough to catch mistakes: wrong argument types, globals
    // that do not exist in a plugin, a wrong result type.
    std::fs::write(
        example.join("misuse.ts"),
        "host.log(42);\nfetch('https://example.com');\nconst v: number = host.config.version;\nexport {};\n",
    )
    .unwrap();
    let (ok, errors) = compile(&example);
    assert!(!ok);
    assert!(errors.contains("misuse.ts(1,"), "{errors}");
    assert!(errors.contains("misuse.ts(2,1): error TS2304: Cannot find name 'fetch'"), "{errors}");
    assert!(errors.contains("misuse.ts(3,"), "{errors}");
}
