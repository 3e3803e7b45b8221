//! Permissions on the host API: granted, denied, overridden by the host's policy.

mod common;

use common::{PluginDir, test_host};
use isola::manifest::Severity;
use isola::permissions::Policy;
use isola::{Engine, ErrorCode, HostApi, Manager};
use serde_json::{Value, json};

fn host() -> HostApi {
    test_host()
        .requires("fetchUser", "users")
        .requires("add", "math")
        .value("secret", "s3cr3t")
        .requires("secret", "secrets")
}

fn manifest(id: &str, permissions: &[&str]) -> String {
    json!({"id": id, "name": id, "version": "1.0.0", "apiVersion": 1, "permissions": permissions}).to_string()
}

const PROBE: &str = "export default {
    add() { return host.add(1, 2); },
    addCaught() { try { host.add(1, 2); } catch (e) { return { name: e.name, code: e.code, message: e.message }; } },
    async user() { return (await host.fetchUser(1)).name; },
    async userCaught() { try { await host.fetchUser(1); } catch (e) { return e.code; } },
    secret() { return [typeof host.secret, 'secret' in host]; },
    open() { return host.config.version; },
};";

fn load(engine: Engine, id: &str, permissions: &[&str]) -> (PluginDir, Manager, isola::PluginHandle) {
    let dir = PluginDir::new();
    let path = dir.module_with_manifest(id, &manifest(id, permissions), PROBE);
    let m = Manager::new(engine);
    let h = m.load(path).unwrap();
    (dir, m, h)
}

#[test]
fn granted_permissions_open_gated_items() {
    let (_d, m, h) = load(common::engine_with(host()), "trusted", &["users", "math", "secrets"]);
    assert_eq!(h.call_blocking::<_, f64>("add", ()).unwrap(), 3.0);
    assert_eq!(h.call_blocking::<_, String>("user", ()).unwrap(), "user1");
    assert_eq!(h.call_blocking::<_, Value>("secret", ()).unwrap(), json!(["string", true]));
    let p = &m.list()[0].permissions;
    assert_eq!(p.requested, vec!["users", "math", "secrets"]);
    assert_eq!(p.granted, vec!["math", "secrets", "users"]);
}

#[test]
fn missing_permissions_are_denied_catchably_and_counted() {
    let (_d, _m, h) = load(common::engine_with(host()), "plain", &[]);
    // Open items work for everyone.
    assert_eq!(h.call_blocking::<_, String>("open", ()).unwrap(), "9.9.9");
    let v: Value = h.call_blocking("addCaught", ()).unwrap();
    assert_eq!(v["name"], "Error");
    assert_eq!(v["code"], "PERMISSION_DENIED");
    assert!(v["message"].as_str().unwrap().contains("`math`"), "{v}");
    assert_eq!(h.call_blocking::<_, String>("userCaught", ()).unwrap(), "PERMISSION_DENIED");
    // Uncaught, the hook fails with that code (counted once, where it was thrown).
    let e = h.call_blocking::<_, Value>("add", ()).unwrap_err();
    assert_eq!(e.code, ErrorCode::PermissionDenied);
    assert!(e.js.is_some(), "the JS details are kept: {e:?}");
    assert!(e.message.contains("lacks the permission"), "{e}");
    // Gated values are simply absent.
    assert_eq!(h.call_blocking::<_, Value>("secret", ()).unwrap(), json!(["undefined", false]));
    assert_eq!(h.stats().errors_of(ErrorCode::PermissionDenied), 3);
}

#[test]
fn the_host_policy_wins_over_the_manifest() {
    let policy = Policy::default().deny("*", "users").grant("vip", "users").grant("quiet", "math").deny("loud", "math");
    let engine = common::builder().host(host()).policy(policy).build();
    let (_d, _m, asks) = load(engine.clone(), "asks", &["users"]);
    assert_eq!(asks.call_blocking::<_, String>("userCaught", ()).unwrap(), "PERMISSION_DENIED", "refused for all");
    let (_d, _m, vip) = load(engine.clone(), "vip", &[]);
    assert_eq!(vip.call_blocking::<_, String>("user", ()).unwrap(), "user1", "granted without asking");
    let (_d, _m, quiet) = load(engine.clone(), "quiet", &[]);
    assert_eq!(quiet.call_blocking::<_, f64>("add", ()).unwrap(), 3.0);
    let (_d, m, loud) = load(engine, "loud", &["math"]);
    assert_eq!(loud.call_blocking::<_, Value>("addCaught", ()).unwrap()["code"], "PERMISSION_DENIED");
    let p = &m.list()[0].permissions;
    assert_eq!((p.requested.clone(), p.granted.clone()), (vec!["math".to_string()], vec![]));
}

#[test]
fn unknown_permission_names_are_warned_about() {
    let (_d, m, _h) = load(common::engine_with(host()), "typo", &["user", "storage"]);
    let info = &m.list()[0];
    let warnings: Vec<_> = info.diagnostics.iter().filter(|d| d.code == "unknown_permission").collect();
    assert_eq!(warnings.len(), 1, "{:?}", info.diagnostics);
    assert_eq!(warnings[0].severity, Severity::Warning);
    assert_eq!(warnings[0].path, "$.permissions[0]");
    assert!(warnings[0].message.contains("users"), "lists the known names: {}", warnings[0].message);
}

#[test]
fn malformed_permissions_are_manifest_errors() {
    let dir = PluginDir::new();
    let path = dir.module_with_manifest(
        "bad",
        &json!({"id": "bad", "name": "b", "version": "1", "apiVersion": 1, "permissions": ["ok", 5, ""]}).to_string(),
        "export default {};",
    );
    let e = Manager::new(common::engine_with(host())).load(path).unwrap_err();
    assert_eq!(e.code, ErrorCode::ManifestInvalid);
    let paths: Vec<&str> = e.diagnostics.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(paths, vec!["$.permissions[1]", "$.permissions[2]"]);
}

#[test]
fn cli_list_shows_requested_and_granted_permissions() {
    let dir = PluginDir::new();
    dir.module_with_manifest("asker", &manifest("asker", &["users", "nonsense"]), "export default {};");
    let out = common::isola_command().args(["list", dir.path().to_str().unwrap()]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("granted [nonsense, users]"), "{stdout}");
    assert!(stdout.contains("unknown_permission") && stdout.contains("nonsense"), "{stdout}");
}
