//! The `waly` command: parse, call the library, print the error chain.

/// mimalloc: readers allocate and free a few small strings per value, and
/// the export frees on one thread what another allocated; the system
/// allocator spends a third of an export's time on that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    waly::cli::main_with(return_memory_at_once)
}

/// `waly run` is a long-lived sidecar: mimalloc returns the pages it frees
/// to the OS at once instead of after 100 ms (10 ms times its arena
/// multiplier). In the 10M-change build (bench/history.sh) that halves the
/// sidecar's peak resident set, from 114 MB to 58 MB: merges and segment
/// buffers free memory in bursts. Readers keep the default (an export
/// frees and reuses pages fast). The `no_thp` feature (Cargo.toml) keeps
/// mimalloc from asking for transparent huge pages, which tripled it.
#[allow(unsafe_code)]
fn return_memory_at_once() {
    // `mi_option_purge_delay` in mimalloc 3.3 (bundled by libmimalloc-sys
    // 0.1.49, pinned in Cargo.lock): the 16th option of `mi_option_e`.
    const MI_OPTION_PURGE_DELAY: std::os::raw::c_int = 15;
    extern "C" {
        fn mi_option_set(option: std::os::raw::c_int, value: std::os::raw::c_long);
    }
    // SAFETY: `mi_option_set` stores an option's value (atomically); any
    // option number below `_mi_option_last` is valid, at any time.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 0) }
}
