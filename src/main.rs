//! The `keel` binary: parse the command line, set up logging, dispatch. Everything else is library
//! code.

use clap::Parser;

/// jemalloc instead of the system allocator: under a minute of 2,000 appends/s glibc's RSS grew
/// 66 → 103 MiB, jemalloc's stayed at 64–76, and glibc's malloc was a tenth of the relay's CPU
/// in a drain. It is built unprefixed (Cargo.toml), so it is the process's `malloc` too and
/// librdkafka's and the other C libraries' memory gets the same purge instead of growing in
/// glibc's thread arenas. Its settings (a background purge thread, 1 s decay) are baked in by
/// `.cargo/config.toml`. See docs/benchmarks.md (memory).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
