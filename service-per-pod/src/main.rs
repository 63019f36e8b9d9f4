use std::process::ExitCode;

use clap::Parser;
use service_per_pod::Cli;

fn main() -> ExitCode {
    let _cli = Cli::parse();
    eprintln!("service-per-pod: only --help works so far; the behaviour arrives with issue 3");
    ExitCode::from(2)
}
