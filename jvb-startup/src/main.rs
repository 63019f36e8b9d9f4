use std::process::ExitCode;

use clap::Parser;
use jvb_startup::Cli;

fn main() -> ExitCode {
    let _cli = Cli::parse();
    eprintln!("jvb-startup: only --help works so far; the behaviour arrives with issue 4");
    ExitCode::from(2)
}
