//! The `syncstore` command: a shim that parses the flags, runs the command (src/cli/)
//! and turns its error into a message and an exit code.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    cli::configure_memory();
    match cli::run(cli::Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("syncstore: {e}");
            ExitCode::FAILURE
        }
    }
}
