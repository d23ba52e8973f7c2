//! `bangerd`: parses its arguments and hands over to [`banger_daemon::main`].
fn main() -> std::process::ExitCode {
    banger_daemon::main()
}
