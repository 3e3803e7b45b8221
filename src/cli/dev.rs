//! `isola dev DIR`: load, watch, and poke plugins interactively (or from a script through a
//! pipe). Lifecycle events and the plugins' console output appear as they happen.

use std::io::BufRead;
use std::path::Path;

use crossbeam_channel::select;
use isola::Manager;
use isola::events::LifecycleEvent;
use serde_json::Value;

const HELP: &str = "commands:
  PLUGIN.HOOK(ARGS)   call a hook; ARGS are JSON values separated by commas, e.g. greeter.greet(\"Ada\")
  list                plugins, status and hooks
  stats               calls, errors, restarts, memory and CPU per plugin
  reload PLUGIN       reload one plugin from disk
  help                this text
  quit                stop (so do end of input and Ctrl-C)";

pub fn dev(manager: &Manager, dir: &Path) -> bool {
    let interrupted = ctrl_c();
    let events = manager.events();
    std::thread::spawn(move || {
        for e in events {
            println!("{}", describe(&e));
        }
    });
    if let Err(e) = manager.load_dir(dir) {
        eprintln!("error: {e}");
        return false;
    }
    if let Err(e) = manager.watch(dir) {
        eprintln!("error: {e}");
        return false;
    }
    super::print_table(&manager.list());
    println!("watching {} — type `help` for commands", dir.display());

    let lines = stdin_lines();
    loop {
        select! {
            recv(lines) -> line => match line {
                Ok(line) => {
                    if !run_command(manager, line.trim()) {
                        break;
                    }
                }
                Err(_) => break, // end of input
            },
            recv(interrupted) -> _ => break,
        }
    }
    true
}

/// Executes one command; false means quit.
fn run_command(manager: &Manager, line: &str) -> bool {
    match line.split_once(' ').unwrap_or((line, "")) {
        ("", _) => {}
        ("quit" | "exit", _) => return false,
        ("help", _) => println!("{HELP}"),
        ("list", _) => super::print_table(&manager.list()),
        ("stats", _) => {
            for p in manager.list() {
                let s = &p.stats;
                let errors: Vec<String> = s.errors.iter().map(|(c, n)| format!("{c}={n}")).collect();
                println!(
                    "{}: {} calls, errors [{}], {} restarts, heap {:.1}/{} MiB, CPU {:.1} ms, in calls {:.1} ms",
                    p.id,
                    s.calls,
                    errors.join(" "),
                    s.restarts,
                    s.heap_used as f64 / 1048576.0,
                    s.heap_limit >> 20,
                    s.cpu_time.as_secs_f64() * 1e3,
                    s.wall_time.as_secs_f64() * 1e3,
                );
            }
        }
        ("reload", id) => match manager.reload(id.trim()) {
            Ok(()) => {} // the `reloaded` event says so
            Err(e) => println!("error: {e}"),
        },
        _ => match parse_call(line) {
            Ok((plugin, hook, args)) => {
                match manager.handle(plugin).and_then(|h| h.call_blocking::<_, Value>(hook, args)) {
                    Ok(v) => println!("{}", serde_json::to_string(&v).unwrap_or_default()),
                    Err(e) => println!("error: {e}"),
                }
            }
            Err(msg) => println!("error: {msg}"),
        },
    }
    true
}

/// `plugin.hook(1, "two")` → ("plugin", "hook", [1, "two"]). Parentheses are optional when
/// there are no arguments.
fn parse_call(line: &str) -> Result<(&str, &str, Vec<Value>), String> {
    let (target, args) = match line.find('(') {
        Some(open) => {
            let close = line.rfind(')').filter(|c| *c > open).ok_or("missing `)`")?;
            (&line[..open], &line[open + 1..close])
        }
        None => (line, ""),
    };
    let (plugin, hook) =
        target.trim().split_once('.').ok_or_else(|| format!("unknown command `{line}`; type `help` for commands"))?;
    let args: Vec<Value> = serde_json::from_str(&format!("[{args}]"))
        .map_err(|e| format!("arguments must be JSON values separated by commas ({e})"))?;
    Ok((plugin.trim(), hook.trim(), args))
}

fn describe(e: &LifecycleEvent) -> String {
    match e {
        LifecycleEvent::Loaded { plugin, version, took_ms } => format!("[loaded] {plugin} {version} in {took_ms} ms"),
        LifecycleEvent::LoadFailed { plugin, error } => format!("[load failed] {plugin}: {error}"),
        LifecycleEvent::Reloaded { plugin, version, took_ms } => {
            format!("[reloaded] {plugin} {version} in {took_ms} ms")
        }
        LifecycleEvent::ReloadFailed { plugin, error } => {
            format!("[reload failed] {plugin}: {error} — the previous version keeps running")
        }
        LifecycleEvent::Unloaded { plugin } => format!("[unloaded] {plugin}"),
        LifecycleEvent::Restarted { plugin, error } => format!("[restarted] {plugin} after {error}"),
        LifecycleEvent::HookFailed { plugin, error } => format!("[hook failed] {plugin}: {error}"),
        other => format!("[event] {other:?}"),
    }
}

/// Lines of standard input, read on their own thread; the channel closes at end of input.
pub fn stdin_lines() -> crossbeam_channel::Receiver<String> {
    let (tx, rx) = crossbeam_channel::bounded(64);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Fires once on Ctrl-C (SIGINT). The handler is installed before this returns, so a Ctrl-C
/// right after start-up is not lost to the default action (killing the process).
pub fn ctrl_c() -> crossbeam_channel::Receiver<()> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let (ready_tx, ready) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        let _guard = rt.enter();
        let Ok(mut sigint) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()) else {
            return;
        };
        let _ = ready_tx.send(());
        if rt.block_on(sigint.recv()).is_some() {
            let _ = tx.send(());
        }
    });
    let _ = ready.recv();
    rx
}
