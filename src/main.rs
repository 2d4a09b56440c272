//! The `keel` binary: parse the command line, set up logging, dispatch. Everything else is library
//! code.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = keel::cli::Cli::parse();
    match keel::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
