//! Command-line interface: `isola list`, `isola call`, `isola run`.

mod demo_host;
mod dev;
mod inspect;
mod new;
mod serve;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use isola::manager::{LoadReport, PluginInfo};
use isola::storage::Storage;
use isola::{Engine, Error, ErrorCode, Manager, PluginStatus};
use serde_json::Value;

/// isola: run sandboxed JavaScript plugins, each in its own V8 isolate with memory and time
/// limits.
#[derive(Parser)]
#[command(name = "isola", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Global {
    /// Memory budget per plugin in MiB (V8 heap plus ArrayBuffers), e.g. `--heap-limit 32`.
    #[arg(long, global = true, value_name = "MB", default_value_t = isola::engine::DEFAULT_HEAP_LIMIT_MB)]
    heap_limit: u64,
    /// Limit on all thread-isolated plugins' memory together in MiB: past it, the plugin
    /// holding the most is stopped (`HEAP_LIMIT`) and restarted, e.g. `--total-memory 2048`.
    #[arg(long, global = true, value_name = "MB")]
    total_memory: Option<u64>,
    /// Evict plugins idle this many seconds (thread and isolate freed; the next call brings
    /// them back, with the state `onUnload` handed over), e.g. `--evict-idle 300`.
    #[arg(long, global = true, value_name = "SECS")]
    evict_idle: Option<f64>,
    /// Time limit per hook call in milliseconds, e.g. `--timeout 500`.
    #[arg(long, global = true, value_name = "MS", default_value_t = isola::engine::DEFAULT_CALL_TIMEOUT.as_millis() as u64)]
    timeout: u64,
    /// Show plugins' console output and host.log lines (and isola's own info logs) on stderr,
    /// e.g. `isola -v run plugins`.
    #[arg(short, long, global = true)]
    verbose: bool,
    /// Only print results and errors, e.g. `isola --quiet run plugins`.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Where plugins' `host.storage` data lives (default: $XDG_DATA_HOME/isola, or
    /// ~/.local/share/isola), e.g. `--data-dir ./data`.
    #[arg(long, global = true, value_name = "DIR", env = "ISOLA_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Where plugins run: `thread` (default) or `process` (each plugin in a child process, so
    /// that even a V8 fatal error costs only that plugin a restart), e.g. `--isolation process`.
    #[arg(long, global = true, value_name = "MODE", default_value = "thread", value_parser = ["thread", "process"])]
    isolation: String,
    /// With `--isolation process` on Linux: once loaded, each plugin's process refuses system
    /// calls that open files or sockets or run programs, e.g. `--isolation process --seccomp`.
    #[arg(long, global = true)]
    seccomp: bool,
}

#[derive(Subcommand)]
enum Command {
    /// List every plugin in DIR with its status, hooks and manifest diagnostics.
    ///
    /// Example: `isola list plugins --json`
    List {
        /// The plugin directory.
        dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Load one plugin from DIR, call one of its hooks (or a `PLUGIN:COMMAND`) and print the
    /// result as JSON.
    ///
    /// Example: `isola call plugins greeter greet Ada`, `isola call plugins greeter:hello Ada`
    Call {
        /// The plugin directory.
        dir: PathBuf,
        /// The plugin id, or `PLUGIN:COMMAND` to run a command.
        plugin: String,
        /// The hook to call (omitted for a command), then the arguments: each is parsed as
        /// JSON (`42`, `'{"a":1}'`), else taken as a string.
        args: Vec<String>,
        /// On failure, print `{"error":{"code":…,"message":…}}` on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Load every plugin in DIR, print their status, and call each plugin's `main` hook.
    ///
    /// Example: `isola run plugins`
    Run {
        /// The plugin directory.
        dir: PathBuf,
    },
    /// Load DIR, watch it for changes (reloading plugins as they are saved), and take commands
    /// on stdin: `PLUGIN.HOOK(ARGS)`, `list`, `stats`, `reload PLUGIN`, `help`, `quit`.
    ///
    /// Example: `isola dev plugins`, then type `greeter.greet("Ada")`
    Dev {
        /// The plugin directory.
        dir: PathBuf,
        /// Let debuggers attach (Chrome DevTools, VS Code) at this loopback address: each plugin
        /// is a target under `http://ADDR/json/list`. `debugger;` statements and breakpoints
        /// pause the plugin, and its time limit stops counting while it is paused.
        #[arg(long, value_name = "ADDR", num_args = 0..=1, require_equals = true, default_missing_value = "127.0.0.1:9229")]
        inspect: Option<std::net::SocketAddr>,
        /// As `--inspect`, and every plugin waits for a debugger before its first line runs,
        /// pausing there.
        #[arg(long, value_name = "ADDR", num_args = 0..=1, require_equals = true, default_missing_value = "127.0.0.1:9229", conflicts_with = "inspect")]
        inspect_brk: Option<std::net::SocketAddr>,
    },
    /// Send EVENT with a JSON payload to every subscribed plugin and print each delivery.
    ///
    /// Example: `isola emit plugins chat '{"user":"ada","text":"hello :)"}' --chain`
    Emit {
        /// The plugin directory.
        dir: PathBuf,
        /// The event name.
        event: String,
        /// The payload, as JSON (else taken as a string).
        payload: Option<String>,
        /// Run the subscribers as a chain (in priority order; each may change or cancel the
        /// event) instead of notifying them all in parallel.
        #[arg(long)]
        chain: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the commands the plugins in DIR offer, as `PLUGIN:COMMAND`.
    ///
    /// Example: `isola commands plugins`
    Commands {
        /// The plugin directory.
        dir: PathBuf,
    },
    /// Manage plugins' stored data.
    ///
    /// Example: `isola data remove notes`
    Data {
        #[command(subcommand)]
        action: DataAction,
    },
    /// Serve DIR to another program over JSON-RPC 2.0: on stdin/stdout, one message per line,
    /// or over WebSocket with `--listen`. The client sends `initialize` first, with the host
    /// functions it serves to plugins; then `call`, `emit`, `dispatch`, `command`, `load`, ...
    /// (the README has the protocol).
    ///
    /// Example: `isola serve plugins`, `isola serve plugins --listen 127.0.0.1:7700`
    Serve {
        /// The plugin directory.
        dir: PathBuf,
        /// Reload plugins when their files change.
        #[arg(long)]
        watch: bool,
        /// Speak the protocol over WebSocket on this address instead of stdin/stdout (one
        /// session per connection), e.g. `--listen 127.0.0.1:7700` (port 0: any free port).
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
        /// The token clients must present (`Authorization: Bearer TOKEN`, or `token` in
        /// `initialize`); required to listen on anything but a loopback address.
        #[arg(long, value_name = "TOKEN", env = "ISOLA_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Write `isola.d.ts` into DIR: TypeScript declarations of `host` as this host offers it,
    /// `console`, the web globals inside a plugin and the `Plugin` type, for editors and
    /// `tsc --noEmit`.
    ///
    /// Example: `isola types plugins/inventory`, `isola types --stdout`
    Types {
        /// Where to write `isola.d.ts` (default: the current directory).
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Print the declarations instead of writing the file.
        #[arg(long)]
        stdout: bool,
    },
    /// Create a working plugin NAME in DIR: `plugin.json`, `main.js` (or `main.ts` with
    /// `--ts`), `isola.d.ts` and a `tsconfig.json` for the editor.
    ///
    /// Example: `isola new hello --ts plugins`, then `isola dev plugins`
    New {
        /// The plugin id (also its folder's name).
        name: String,
        /// Where to create the plugin's folder (default: the current directory).
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Write the plugin in TypeScript (`main.ts`).
        #[arg(long)]
        ts: bool,
    },
    /// Runs one process-isolated plugin for a host (started by isola itself, never by hand).
    #[command(hide = true)]
    Worker,
}

#[derive(Subcommand)]
enum DataAction {
    /// Delete everything PLUGIN stored with host.storage (unloading a plugin keeps its data).
    Remove {
        /// The plugin id.
        plugin: String,
    },
}

/// `--data-dir`, else the platform's per-user data directory.
fn data_dir(g: &Global) -> PathBuf {
    if let Some(d) = &g.data_dir {
        return d.clone();
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("isola")
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // `dev` is interactive: its logs (plugin console output included) share stdout with the
    // results. Everything else keeps stdout for results (and `serve` for protocol messages).
    let to_stdout = matches!(cli.command, Command::Dev { .. });
    init_tracing(&cli.global, to_stdout);
    if matches!(cli.command, Command::Worker) {
        eprintln!("error: `isola worker` is started by an isola host for a process-isolated plugin, not by hand");
        return ExitCode::FAILURE;
    }
    let isolation = if cli.global.isolation == "process" {
        isola::engine::Isolation::Process
    } else {
        isola::engine::Isolation::Thread
    };
    // One storage for every engine of this process (`serve` makes one per session).
    let storage = Storage::in_dir(data_dir(&cli.global));
    let (total_memory, seccomp, heap_limit, timeout) =
        (cli.global.total_memory, cli.global.seccomp, cli.global.heap_limit, cli.global.timeout);
    let evict_idle = cli.global.evict_idle.filter(|s| s.is_finite() && *s >= 0.0).map(Duration::from_secs_f64);
    let (inspect_mode, inspect_addr) = match &cli.command {
        Command::Dev { inspect: Some(a), .. } => (isola::engine::InspectMode::On, Some(*a)),
        Command::Dev { inspect_brk: Some(a), .. } => (isola::engine::InspectMode::BreakOnStart, Some(*a)),
        _ => (isola::engine::InspectMode::Off, None),
    };
    let make_engine = move |host: isola::HostApi, policy: isola::permissions::Policy| {
        let mut builder = Engine::builder().inspect(inspect_mode);
        if let Some(mb) = total_memory {
            builder = builder.total_memory_limit_mb(mb);
        }
        if let Some(idle) = evict_idle {
            builder = builder.evict_idle_after(idle);
        }
        builder
            .isolation(isolation)
            .seccomp(seccomp)
            .host(host)
            .policy(policy)
            .heap_limit_mb(heap_limit)
            .call_timeout(Duration::from_millis(timeout))
            .storage(storage.clone())
            .build()
    };
    match &cli.command {
        Command::Types { dir, stdout } => return exit(types(dir, *stdout)),
        Command::New { name, dir, ts } => return exit(create(name, dir, *ts, cli.global.quiet)),
        _ => {}
    }
    if let Command::Serve { dir, watch, listen, token } = cli.command {
        // Plugins under `serve` get the host API the client declares, not the demo one.
        let ctx = serve::Context { dir, watch, token, engine: Box::new(make_engine) };
        return exit(serve::serve(ctx, listen));
    }
    let manager = Manager::new(make_engine(demo_host::demo_host(), Default::default()));
    let ok = match cli.command {
        Command::List { dir, json } => list(&manager, &dir, json),
        Command::Call { dir, plugin, args, json } => call(&manager, &dir, &plugin, &args, json),
        Command::Emit { dir, event, payload, chain, json } => {
            let payload = payload.as_deref().map(parse_arg).unwrap_or(Value::Null);
            emit(&manager, &dir, &event, payload, chain, json)
        }
        Command::Commands { dir } => commands(&manager, &dir),
        Command::Run { dir } => run(&manager, &dir, cli.global.quiet),
        Command::Dev { dir, .. } => match inspect_addr {
            Some(addr) => inspect::serve_while(&manager, addr, || dev::dev(&manager, &dir)).unwrap_or_else(|e| {
                eprintln!("error: {e}");
                false
            }),
            None => dev::dev(&manager, &dir),
        },
        Command::Data { action: DataAction::Remove { plugin } } => match manager.remove_data(&plugin) {
            Ok(()) => {
                if !cli.global.quiet {
                    println!("removed the data of `{plugin}`");
                }
                true
            }
            Err(e) => {
                eprintln!("error: {e}");
                false
            }
        },
        Command::Serve { .. } | Command::Worker | Command::Types { .. } | Command::New { .. } => {
            unreachable!("handled above")
        }
    };
    manager.shutdown();
    exit(ok)
}

/// `isola types`: the demo host's declarations.
fn types(dir: &Path, stdout: bool) -> bool {
    let host = demo_host::demo_host();
    if stdout {
        print!("{}", isola::typings::declarations(&host));
        return true;
    }
    match isola::typings::write(&host, dir) {
        Ok(path) => {
            println!("wrote {}", path.display());
            true
        }
        Err(e) => {
            eprintln!("error: cannot write {}: {e}", dir.join("isola.d.ts").display());
            false
        }
    }
}

/// `isola new`.
fn create(name: &str, dir: &Path, ts: bool, quiet: bool) -> bool {
    match new::new_plugin(&demo_host::demo_host(), dir, name, ts) {
        Ok(folder) => {
            if !quiet {
                let main = if ts { "main.ts" } else { "main.js" };
                println!("created {} (plugin.json, {main}, isola.d.ts, tsconfig.json)", folder.display());
                println!("next: isola dev {}    then type {name}.hello(\"Ada\")", dir.display());
            }
            true
        }
        Err(e) => {
            eprintln!("error: {e}");
            false
        }
    }
}

fn exit(ok: bool) -> ExitCode {
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn init_tracing(g: &Global, to_stdout: bool) {
    let default = if g.verbose || (to_stdout && !g.quiet) {
        "info,isola::plugin=trace"
    } else if g.quiet {
        "error,isola::plugin=off"
    } else {
        "warn,isola::plugin=off"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("ISOLA_LOG").unwrap_or_else(|_| default.into());
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    if to_stdout {
        builder.with_writer(std::io::stdout).with_ansi(std::io::stdout().is_terminal()).init();
    } else {
        builder.with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal()).init();
    }
}

fn load_dir(manager: &Manager, dir: &Path) -> Option<LoadReport> {
    match manager.load_dir(dir) {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("error: {e}");
            None
        }
    }
}

fn list(manager: &Manager, dir: &Path, json: bool) -> bool {
    let Some(report) = load_dir(manager, dir) else { return false };
    let plugins = manager.list();
    if json {
        println!("{}", serde_json::to_string_pretty(&plugins).unwrap_or_default());
    } else {
        print_table(&plugins);
    }
    report.failed.is_empty()
}

pub(crate) fn print_table(plugins: &[PluginInfo]) {
    let idw = plugins.iter().map(|p| p.id.len()).max().unwrap_or(2).max(2);
    println!("{:idw$}  {:9}  {:10}  HOOKS", "ID", "VERSION", "STATUS");
    for p in plugins {
        println!("{:idw$}  {:9}  {:10}  {}", p.id, p.version, p.status.as_str(), p.hooks.join(", "));
        let perms = &p.permissions;
        if !perms.requested.is_empty() || !perms.granted.is_empty() {
            let refused: Vec<&str> =
                perms.requested.iter().filter(|r| !perms.granted.contains(r)).map(String::as_str).collect();
            let mut line = format!("permissions: granted [{}]", perms.granted.join(", "));
            if !refused.is_empty() {
                line += &format!(", refused [{}]", refused.join(", "));
            }
            println!("{:idw$}  {line}", "");
        }
        for d in &p.diagnostics {
            println!("{:idw$}  {d}", "");
        }
        if let Some(e) = &p.error {
            if e.diagnostics.is_empty() {
                println!("{:idw$}  {e}", "");
            } else {
                println!("{:idw$}  {}: {}", "", e.code, e.message);
            }
        }
    }
}

/// Each CLI argument as JSON if it parses, else as a string.
fn parse_arg(a: &str) -> Value {
    serde_json::from_str(a).unwrap_or_else(|_| Value::String(a.to_owned()))
}

fn call(manager: &Manager, dir: &Path, target: &str, rest: &[String], json: bool) -> bool {
    let r = match target.split_once(':') {
        // A command: its plugin is the part before the colon.
        Some((plugin, _)) => find_plugin(dir, plugin).and_then(|path| {
            manager.load(path)?;
            let args: Vec<Value> = rest.iter().map(|a| parse_arg(a)).collect();
            manager.run_command(target, args)
        }),
        None => match rest.split_first() {
            None => {
                Err(Error::new(ErrorCode::HookNotFound, "name the hook to call: isola call DIR PLUGIN HOOK [ARG...]")
                    .plugin(target))
            }
            Some((hook, args)) => find_plugin(dir, target).and_then(|path| {
                let handle = manager.load(path)?;
                let args: Vec<Value> = args.iter().map(|a| parse_arg(a)).collect();
                handle.call_blocking::<_, Value>(hook, args)
            }),
        },
    };
    match r {
        Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            true
        }
        Err(e) => {
            if json {
                let body = serde_json::json!({ "error": e.to_json() });
                println!("{}", serde_json::to_string(&body).unwrap_or_default());
            }
            eprintln!("error: {e}");
            false
        }
    }
}

/// Finds the folder or script of plugin `id` in `dir` without loading the others.
pub(crate) fn find_plugin(dir: &Path, id: &str) -> isola::Result<PathBuf> {
    let found = isola::source::discover(dir)?;
    let mut known = Vec::new();
    for item in found {
        match item {
            Ok(src) if src.id == id => return Ok(src.location),
            Ok(src) => known.push(src.id),
            Err(e) if e.plugin.as_deref() == Some(id) => return Err(e),
            Err(e) => known.extend(e.plugin),
        }
    }
    Err(Error::new(
        ErrorCode::PluginNotFound,
        format!("no plugin `{id}` in {} (found: {})", dir.display(), known.join(", ")),
    )
    .plugin(id))
}

fn emit(manager: &Manager, dir: &Path, event: &str, payload: Value, chain: bool, json: bool) -> bool {
    let Some(report) = load_dir(manager, dir) else { return false };
    for e in &report.failed {
        eprintln!("warning: {e}");
    }
    let reported = if chain {
        manager.dispatch_blocking(event, payload).map(|r| (r.deliveries.clone(), serde_json::to_value(&r)))
    } else {
        manager.emit_blocking(event, payload).map(|r| (r.deliveries.clone(), serde_json::to_value(&r)))
    };
    let (deliveries, value) = match reported {
        Ok((d, v)) => (d, v.unwrap_or_default()),
        Err(e) => {
            eprintln!("error: {e}");
            return false;
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
    } else {
        if deliveries.is_empty() {
            println!("no plugin subscribes to `{event}`");
        }
        for d in &deliveries {
            let what = match (&d.error, &d.result) {
                (Some(e), _) => format!("failed: {e}"),
                (None, Some(v)) => serde_json::to_string(v).unwrap_or_default(),
                (None, None) => format!("{:?}", d.outcome).to_lowercase(),
            };
            println!("{}.{}: {what}", d.plugin, d.hook);
        }
        if chain {
            match value.get("cancelledBy").and_then(Value::as_str) {
                Some(who) => println!("cancelled by {who}"),
                None => println!("payload: {}", value["payload"]),
            }
        }
    }
    deliveries.iter().all(|d| d.error.is_none())
}

fn commands(manager: &Manager, dir: &Path) -> bool {
    let Some(report) = load_dir(manager, dir) else { return false };
    let cmds = manager.commands();
    let w = cmds.iter().map(|c| c.name.len()).max().unwrap_or(0);
    for c in &cmds {
        println!("{:w$}  {}", c.name, c.title);
    }
    if cmds.is_empty() {
        println!("no plugin declares commands");
    }
    report.failed.is_empty()
}

fn run(manager: &Manager, dir: &Path, quiet: bool) -> bool {
    let Some(report) = load_dir(manager, dir) else { return false };
    let plugins = manager.list();
    if !quiet {
        print_table(&plugins);
        println!();
    }
    let mut ok = report.failed.is_empty();
    for p in plugins.iter().filter(|p| p.status == PluginStatus::Ready && p.hooks.iter().any(|h| h == "main")) {
        let r = manager.handle(&p.id).and_then(|h| h.call_blocking::<_, Value>("main", ()));
        match r {
            Ok(v) => println!("{}: {}", p.id, serde_json::to_string(&v).unwrap_or_default()),
            Err(e) => {
                ok = false;
                eprintln!("error: {e}");
            }
        }
    }
    ok
}
