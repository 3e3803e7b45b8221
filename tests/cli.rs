//! The `isola` binary, driven as a user would.

mod common;

use std::process::Output;

use common::PluginDir;
use serde_json::Value;

const PLUGINS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/plugins");

fn isola(args: &[&str]) -> Output {
    common::isola_command().args(args).output().expect("run isola")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn call_prints_the_result_as_json() {
    let o = isola(&["call", PLUGINS, "greeter", "greet", "Ada"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v, format!("Hello, Ada! App version: {}", env!("CARGO_PKG_VERSION")));
}

/// The startup snapshot is made when isola is compiled (build.rs), not by every process: a
/// short-lived `isola call` would otherwise spend most of its time making it.
#[test]
fn call_uses_the_startup_snapshot_built_into_the_binary() {
    let o = common::isola_command()
        .args(["call", PLUGINS, "greeter", "greet", "Ada"])
        .env("ISOLA_LOG", "isola=debug")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("startup snapshot: the one built into the binary"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("making one at run time"), "{}", stderr(&o));
}

#[test]
fn call_parses_json_arguments() {
    let o = isola(&["call", PLUGINS, "counter", "increment", "41"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "41");
    let o = isola(&["call", PLUGINS, "weather", "report", "2"]);
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["user"], "Grace");
}

#[test]
fn call_failures_exit_1_and_name_the_code() {
    let o = isola(&["call", PLUGINS, "greeter", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("HOOK_NOT_FOUND"), "{}", stderr(&o));
    assert!(stdout(&o).is_empty());

    let o = isola(&["call", PLUGINS, "greeter", "nope", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["error"]["code"], "HOOK_NOT_FOUND");
    assert!(v["error"]["message"].as_str().unwrap().contains("nope"));

    let o = isola(&["call", PLUGINS, "ghost", "x", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["error"]["code"], "PLUGIN_NOT_FOUND");
}

#[test]
fn call_enforces_the_timeout_option() {
    let dir = PluginDir::new();
    dir.script("spin", "var plugin = { spin() { while (true) {} } };");
    let o = isola(&["--timeout", "50", "call", dir.path().to_str().unwrap(), "spin", "spin", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["error"]["code"], "TIMEOUT");
}

#[test]
fn call_enforces_the_heap_limit_option() {
    let dir = PluginDir::new();
    dir.script("bomb", "var plugin = { bomb() { const a = []; while (true) a.push(new ArrayBuffer(1 << 20)); } };");
    let o = isola(&["--heap-limit", "16", "call", dir.path().to_str().unwrap(), "bomb", "bomb", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["error"]["code"], "HEAP_LIMIT");
}

#[test]
fn call_enforces_the_total_memory_option() {
    // The plugin's own budget (64 MiB) would allow it; the total of 24 MiB does not.
    let dir = PluginDir::new();
    dir.script("bomb", "var plugin = { bomb() { const a = []; while (true) a.push(new ArrayBuffer(1 << 20)); } };");
    let o = isola(&["--total-memory", "24", "call", dir.path().to_str().unwrap(), "bomb", "bomb", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["error"]["code"], "HEAP_LIMIT");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("total memory limit of 24 MiB"), "{message}");
}

#[test]
fn call_only_loads_the_named_plugin() {
    let dir = PluginDir::new();
    dir.script("good", "var plugin = { hi() { return 'hi'; } };");
    dir.script("broken", "var plugin = {");
    let o = isola(&["call", dir.path().to_str().unwrap(), "good", "hi"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "\"hi\"");
}

#[test]
fn list_shows_status_hooks_and_diagnostics() {
    let o = isola(&["list", PLUGINS]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("greeter") && out.contains("farewell, greet") && out.contains("ready"), "{out}");

    let dir = PluginDir::new();
    dir.module_with_manifest("bad", r#"{"id": "bad", "apiVersion": 3}"#, "export default {};");
    let o = isola(&["list", dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(out.contains("failed") && out.contains("MANIFEST_INVALID"), "{out}");
    assert!(out.contains("$.name") && out.contains("$.apiVersion"), "{out}");
}

#[test]
fn list_json_is_machine_readable() {
    let o = isola(&["list", PLUGINS, "--json"]);
    assert!(o.status.success());
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let ids: Vec<&str> = v.as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        vec!["chatlog", "counter", "greeter", "inventory", "moderator", "notes", "rewriter", "signup", "weather"]
    );
    let greeter = &v[2];
    assert_eq!(greeter["status"], "ready");
    assert_eq!(greeter["hooks"], serde_json::json!(["farewell", "greet"]));
    assert_eq!(v[8]["permissions"]["granted"], serde_json::json!(["users"]));
}

#[test]
fn run_calls_every_main_hook() {
    let o = isola(&["run", PLUGINS]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("counter: \"counter at 1\""), "{out}");
    assert!(out.contains("weather: \"Ada (London), Grace (Arlington)\""), "{out}");

    let dir = PluginDir::new();
    dir.script("ok", "var plugin = { main() { return 1; } };");
    dir.script("throws", "var plugin = { main() { throw new Error('main failed'); } };");
    let o = isola(&["run", dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("ok: 1"));
    assert!(stderr(&o).contains("JS_ERROR") && stderr(&o).contains("main failed"), "{}", stderr(&o));
}

#[test]
fn verbose_shows_plugin_console_output_and_quiet_hides_the_table() {
    let dir = PluginDir::new();
    dir.script("talk", "var plugin = { main() { console.log('hello from the plugin'); return 0; } };");
    let d = dir.path().to_str().unwrap();
    let o = isola(&["-v", "run", d]);
    assert!(stderr(&o).contains("hello from the plugin"), "{}", stderr(&o));
    assert!(stderr(&o).contains("talk"), "console lines name the plugin: {}", stderr(&o));
    let o = isola(&["run", d]);
    assert!(!stderr(&o).contains("hello from the plugin"));
    let o = isola(&["--quiet", "run", d]);
    assert_eq!(stdout(&o).trim(), "talk: 0");
}

#[test]
fn help_explains_the_options_with_examples() {
    let o = isola(&["--help"]);
    let out = stdout(&o);
    for needle in ["--heap-limit", "--total-memory", "--timeout", "--verbose", "--quiet", "list", "call", "run"] {
        assert!(out.contains(needle), "missing {needle}: {out}");
    }
    let o = isola(&["call", "--help"]);
    assert!(stdout(&o).contains("isola call plugins greeter greet Ada"));
}
