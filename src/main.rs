//! The `waly` command: parse, call the library, print the error chain.

/// mimalloc: readers allocate and free a few small strings per value, and
/// the export frees on one thread what another allocated; the system
/// allocator spends a third of an export's time on that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    waly::cli::main()
}
