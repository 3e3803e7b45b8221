//! The `isola` command: run, list and call plugins from the shell.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
