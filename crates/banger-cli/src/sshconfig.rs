//! `banger ssh-config`: banger's `Host *.vm` block in the owner's `~/.ssh/config`, shown,
//! (re)written or removed. The daemon owns the file (it writes the block at start, config
//! `ssh_config`), so every change goes through it and its one lock.

use banger_api::routes::Route;
use banger_api::types::{SshConfig, SshConfigChange};

use crate::args::SshConfigArgs;
use crate::error::CliError;
use crate::{Ctx, connect};

pub async fn run(args: SshConfigArgs, ctx: &mut Ctx) -> Result<u8, CliError> {
    let (client, _) = connect(ctx).await?;
    let info: SshConfig = client.get(Route::SshConfig).await?;
    if args.print {
        ctx.ui.out().write_all(info.block.as_bytes())?;
        return Ok(0);
    }
    if args.remove {
        let done: SshConfigChange = client.delete(Route::SshConfig).await?;
        let what = if done.changed {
            "removed banger's block from"
        } else {
            "no banger block in"
        };
        ctx.ui.line(&format!("{what} {}", done.path.display()))?;
        if info.at_start {
            ctx.ui.note(
                "the daemon writes it again when it next starts; set ssh_config = false in config.toml to keep it out",
            )?;
        }
        return Ok(0);
    }
    let done: SshConfigChange = client.post(Route::SshConfig, &()).await?;
    let what = if done.changed {
        "wrote banger's block in"
    } else {
        "banger's block is up to date in"
    };
    ctx.ui.line(&format!("{what} {}", done.path.display()))?;
    Ok(0)
}
