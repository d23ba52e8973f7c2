//! `banger-helper`: the root process that performs the few privileged host steps for an
//! unprivileged `bangerd` — the bridge, TAP devices, NAT in banger's own nftables table —
//! and nothing else.
//!
//! [`serve`] accepts connections on a Unix socket; a peer whose uid (from `SO_PEERCRED`)
//! is not the owner's is answered with a refusal and disconnected before any request is
//! read. Each request line is decoded as a typed [`Request`] (unknown fields and
//! operations are refused), checked against the [`Policy`] and only then performed on the
//! injected [`NetOps`] (the real one is banger-net's `DirectNetOps`: `ip` and `nft` with
//! argument vectors, no shell). Every request is logged with the peer, the operation and
//! the outcome. The contract is in [`banger_net::helper`]; the daemon's client is
//! [`banger_net::helper::HelperNetOps`].

use std::sync::Arc;

use banger_net::NetOps;
use banger_net::helper::{MAX_LINE, Policy, Request, Response, perform};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

pub mod entry;

/// Serves `listener` until it fails: every connection on its own task.
pub async fn serve(
    listener: UnixListener,
    policy: Policy,
    net: Arc<dyn NetOps>,
) -> std::io::Result<()> {
    let policy = Arc::new(policy);
    loop {
        let (stream, _) = listener.accept().await?;
        let (policy, net) = (policy.clone(), net.clone());
        tokio::spawn(async move {
            if let Err(e) = connection(stream, &policy, net).await {
                tracing::debug!(error = %e, "helper connection ended");
            }
        });
    }
}

async fn answer(stream: &mut UnixStream, response: &Response) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(response).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line).await
}

async fn connection(
    mut stream: UnixStream,
    policy: &Policy,
    net: Arc<dyn NetOps>,
) -> std::io::Result<()> {
    let cred = stream.peer_cred()?;
    let (uid, pid) = (cred.uid(), cred.pid());
    if uid != policy.owner_uid {
        tracing::warn!(
            uid,
            ?pid,
            "refused a connection from a user other than the owner"
        );
        let error = format!(
            "uid {uid} may not use banger's helper (it serves uid {} only)",
            policy.owner_uid
        );
        return answer(&mut stream, &Response::Refused { error }).await;
    }
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    loop {
        let mut line = Vec::new();
        let n = (&mut lines)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        let whole = line.ends_with(b"\n");
        let response = if whole {
            respond(&line, policy, uid, pid, &net).await
        } else {
            Response::Refused {
                error: format!("a request line is longer than {MAX_LINE} bytes"),
            }
        };
        let mut out = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
        out.push(b'\n');
        write.write_all(&out).await?;
        if !whole {
            // The rest of an over-long line cannot be told from the next request.
            return Ok(());
        }
    }
}

/// The answer to one request line from `uid`: refused, or checked and performed.
async fn respond(
    line: &[u8],
    policy: &Policy,
    uid: u32,
    pid: Option<i32>,
    net: &Arc<dyn NetOps>,
) -> Response {
    let req = match serde_json::from_slice::<Request>(line) {
        Ok(req) => req,
        Err(e) => {
            tracing::warn!(uid, ?pid, error = %e, "refused a malformed request");
            return Response::Refused {
                error: format!("not a helper request: {e}"),
            };
        }
    };
    if let Err(refusal) = policy.check(&req, uid) {
        tracing::warn!(uid, ?pid, request = ?req, reason = %refusal, "refused");
        return Response::Refused {
            error: refusal.to_string(),
        };
    }
    let (net, job) = (net.clone(), req.clone());
    let response = tokio::task::spawn_blocking(move || perform(net.as_ref(), &job))
        .await
        .unwrap_or_else(|e| Response::Failed {
            error: format!("the operation did not finish: {e}"),
        });
    tracing::info!(uid, ?pid, request = ?req, response = ?response, "performed");
    response
}
