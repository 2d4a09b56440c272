//! The `keel` binary: parse the command line, set up logging, dispatch. Everything else is library
//! code.

use clap::Parser;

/// jemalloc instead of the system allocator: glibc's per-thread arenas kept the freed buffers of
/// a long run (relay batches, consumer records) and RSS only grew; jemalloc hands idle pages back
/// after its decay time (10 s) and allocates faster on the relay's hot path. See
/// docs/benchmarks.md (memory).
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
