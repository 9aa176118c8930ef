//! The `warden` binary: everything lives in the library.

fn main() -> std::process::ExitCode {
    warden::cli::main()
}
