//! The `easel` binary; everything lives in the library.

fn main() -> std::process::ExitCode {
    easel::cli::main()
}
