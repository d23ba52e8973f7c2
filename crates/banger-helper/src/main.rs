//! `banger-helper`: parses its arguments and hands over to [`banger_helper::entry::main`].
fn main() -> std::process::ExitCode {
    banger_helper::entry::main()
}
