//! The `conntrack-reconciler` binary: parse the flags, run the command, map errors to one line
//! and the exit code. Everything else is in the library.

use clap::Parser;
use conntrack_reconciler::{cli::Cli, main_with};

fn main() -> std::process::ExitCode {
    match main_with(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
