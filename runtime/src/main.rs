//! The `sluice` binary: see `sluice --help`.

/// glibc's allocator spends much of a busy server's time in locks and
/// consolidation; mimalloc's thread-local heaps do not (see docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    sluice::cli::main()
}
