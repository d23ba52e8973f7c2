//! `banger mcp`: the MCP server on stdio ([`banger_mcp`]), handed the daemon's client, the
//! owner's home (`HOME`), the working directory and config `[mcp]`; and
//! `banger mcp --print-config AGENT`, the snippet for that agent's MCP config.
//!
//! Stdout carries MCP messages only: the daemon is started (or replaced) as for any command,
//! and what that says goes to stderr.

use std::path::PathBuf;

use banger_core::config::Config;
use banger_mcp::snippet::{Agent, snippet};

use crate::args::McpArgs;
use crate::error::CliError;
use crate::{Ctx, connect};

pub async fn run(a: McpArgs, ctx: &mut Ctx) -> Result<u8, CliError> {
    if let Some(agent) = &a.print_config {
        return print_config(ctx, agent);
    }
    let home = ctx
        .env
        .home
        .as_ref()
        .map(PathBuf::from)
        .filter(|h| h.is_absolute())
        .ok_or(CliError::McpNoHome)?;
    let cwd = std::env::current_dir().map_err(CliError::Cwd)?;
    let config = Config::load(&ctx.layout()?.config_file())?.config;
    let (client, _) = connect(ctx).await?;
    let setup = banger_mcp::Setup {
        client,
        home,
        cwd,
        config: config.mcp,
        default_image: config.default_image,
    };
    banger_mcp::serve(setup, tokio::io::stdin(), tokio::io::stdout()).await?;
    Ok(0)
}

fn print_config(ctx: &mut Ctx, agent: &str) -> Result<u8, CliError> {
    let agent: Agent = agent
        .parse()
        .map_err(|e: banger_mcp::snippet::UnknownAgent| CliError::Usage(e.to_string()))?;
    let exe = ctx.env.exe.clone().ok_or(CliError::NoExe)?;
    // The binary as it will be found later, not through a symlink that may move.
    let exe = std::fs::canonicalize(&exe).unwrap_or(exe);
    let env: Vec<(String, String)> = ctx
        .env
        .banger_home
        .iter()
        .map(|h| ("BANGER_HOME".to_string(), h.to_string_lossy().into_owned()))
        .collect();
    let s = snippet(agent, &exe, &env);
    let out = ctx.ui.out();
    out.write_all(s.config.as_bytes())?;
    out.flush()?;
    ctx.ui.note(&s.hint)?;
    Ok(0)
}
