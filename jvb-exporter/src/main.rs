use std::process::ExitCode;

use clap::Parser;
use jvb_exporter::Cli;

fn main() -> ExitCode {
    let _cli = Cli::parse();
    eprintln!("jvb-exporter: only --help works so far; the behaviour arrives with issue 10");
    ExitCode::from(2)
}
