//! The `waly` command: parse, call the library, print the error chain.

fn main() -> std::process::ExitCode {
    waly::cli::main()
}
