//! `banger`: hands over to [`banger_cli::main`].
fn main() -> std::process::ExitCode {
    banger_cli::main()
}
