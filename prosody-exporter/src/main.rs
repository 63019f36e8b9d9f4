use std::process::ExitCode;

use clap::Parser;
use prosody_exporter::Cli;

fn main() -> ExitCode {
    let _cli = Cli::parse();
    eprintln!("prosody-exporter: only --help works so far; the behaviour arrives with issue 5");
    ExitCode::from(2)
}
