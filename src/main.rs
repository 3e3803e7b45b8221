//! The `isola` command: run, list and call plugins from the shell.

mod cli;

fn main() -> std::process::ExitCode {
    // When a host started this binary to run a process-isolated plugin, it does only that.
    isola::process::run_worker_if_requested();
    cli::main()
}
