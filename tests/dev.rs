//! `isola dev`, driven through a pipe like a script would.

mod common;

use std::io::Write;
use std::process::Stdio;

use common::PluginDir;

fn dev(dir: &std::path::Path, input: &str) -> (String, std::process::ExitStatus) {
    let mut child = common::isola_command()
        .arg("dev")
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (String::from_utf8_lossy(&out.stdout).into_owned(), out.status)
}

#[test]
fn commands_from_a_pipe_run_and_end_of_input_exits() {
    let dir = PluginDir::new();
    let path = dir.module(
        "calc",
        "export default { add(a, b) { console.log(`adding ${a} and ${b}`); return a + b; }, obj(o) { return o.k; } };",
    );
    let (out, status) =
        dev(dir.path(), "calc.add(2, 3)\ncalc.obj({\"k\": [1]})\ncalc.nope()\ncalc.add(1,\nlist\nstats\nhelp\n");
    assert!(status.success(), "{out}");
    assert!(out.contains("[loaded] calc 1.0.0"), "{out}");
    assert!(out.contains("\n5\n"), "{out}");
    assert!(out.contains("adding 2 and 3"), "console output is shown: {out}");
    assert!(out.contains("[1]"), "{out}");
    assert!(out.contains("error: HOOK_NOT_FOUND"), "{out}");
    assert!(out.contains("error: missing `)`"), "{out}");
    assert!(out.contains("calc: 3 calls"), "{out}");
    assert!(out.contains("reload PLUGIN"), "{out}");
    drop(path);
}

#[test]
fn quit_stops_and_reload_reports_failures_with_location() {
    let dir = PluginDir::new();
    let path = dir.module("p", "export default { v() { return 1; } };");
    std::fs::write(path.join("main.js"), "export default {\n  v() { return 2 \n};").unwrap();
    let (out, status) = dev(dir.path(), "reload p\nquit\np.v()\n");
    assert!(status.success());
    assert!(out.contains("[load failed] p") || out.contains("error: LOAD_FAILED"), "{out}");
    assert!(out.contains("main.js:"), "the failure names file and line: {out}");
    assert!(!out.contains("\n2\n"), "nothing runs after quit: {out}");
}

#[test]
fn ctrl_c_exits_cleanly() {
    use std::io::{BufRead, BufReader};
    let dir = PluginDir::new();
    dir.script("p", "var plugin = { v() { return 1; } };");
    let mut child = common::isola_command()
        .arg("dev")
        .arg(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("watching") {
        line.clear();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "dev exited before it was ready");
    }
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "dev did not exit on Ctrl-C");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}
