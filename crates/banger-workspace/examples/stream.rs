//! Writes the workspace transfer stream for a repository, the way the daemon will, for
//! `bench/workspace.sh` and for looking at one by hand:
//!
//! ```text
//! cargo run -p banger-workspace --example stream -- PATH OUT.tar [--include-untracked]
//!     [--full-copy] [--branch NAME [--from REF]] [--dry-run] [--script GUEST_PATH]
//! ```
//!
//! Prints the stream's size and entry count on stderr; `--dry-run` prints the plan instead,
//! `--script` prints the guest's prepare script for that path.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use banger_core::runner::SystemRunner;
use banger_workspace::{Existing, Git, InspectOptions, inspect, prepare_script, write_stream};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut stderr = std::io::stderr();
            let _ = writeln!(stderr, "stream: {e}");
            let mut source = e.source();
            while let Some(s) = source {
                let _ = writeln!(stderr, "  caused by: {s}");
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut positional = Vec::new();
    let mut options = InspectOptions::default();
    let (mut dry_run, mut script) = (false, None);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--include-untracked" => options.include_untracked = true,
            "--full-copy" => options.full_copy = true,
            "--branch" => options.branch = Some(args.next().ok_or("--branch needs a name")?),
            "--from" => options.from = Some(args.next().ok_or("--from needs a ref")?),
            "--dry-run" => dry_run = true,
            "--script" => script = Some(args.next().ok_or("--script needs a guest path")?),
            _ => positional.push(PathBuf::from(arg)),
        }
    }
    let [path, out] =
        <[PathBuf; 2]>::try_from(positional).map_err(|_| "usage: stream PATH OUT.tar [flags]")?;
    let git = Git::new(Arc::new(SystemRunner::new()));
    let plan = inspect(&git, &path, &options)?;
    let mut stdout = std::io::stdout();
    if dry_run {
        write!(stdout, "{plan}")?;
        return Ok(());
    }
    if let Some(guest) = script {
        write!(
            stdout,
            "{}",
            prepare_script(&plan, &guest, Existing::Refuse)?
        )?;
        return Ok(());
    }
    let scratch = tempfile::tempdir()?;
    let file = std::io::BufWriter::new(std::fs::File::create(&out)?);
    let stats = write_stream(&git, &plan, scratch.path(), file)?;
    writeln!(
        std::io::stderr(),
        "{} bytes, {} entries{}",
        stats.bytes,
        stats.entries,
        if stats.fetched_base {
            ", base fetched"
        } else {
            ""
        }
    )?;
    Ok(())
}
