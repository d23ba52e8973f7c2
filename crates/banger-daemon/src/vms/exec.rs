//! Exec sessions relayed between a client and a VM's guest agent.
//!
//! `POST /v1/vms/{reference}/exec` with `Connection: Upgrade` and `Upgrade: banger-exec/1`
//! (the agent's own token, [`UPGRADE_EXEC`]): the daemon resolves the VM, checks it runs,
//! opens a stream to its agent ([`super::agent::exec_channel`]: a vsock connection, or a
//! substream of the VM's mux under QEMU) and upgrades that stream to an exec session
//! (`GET /exec`). Only then does it answer `101 Switching Protocols`; every failure before
//! (no such VM, not running, agent unreachable) is a normal API error body. After the 101,
//! [`relay`] copies bytes both ways, unchanged: the client speaks the exec protocol
//! ([`banger_agent_proto::exec`]) to the agent itself, from its `Start` frame to the agent's
//! `Exit`, so the daemon parses nothing of the session.
//!
//! Bounded: the relay holds one fixed buffer per direction (tokio's `copy_bidirectional`)
//! and moves a byte only when the other side takes it, so back-pressure passes through
//! (the protocol's stdin credit and the transport's flow control stay end to end). When one
//! side ends or half-closes, the other side's write end is shut down, so a client that goes
//! away is a half-close at the agent, which then kills the session's processes; and the
//! relay ends when both directions ended or either failed.

use tokio::io::{AsyncRead, AsyncWrite};

pub use banger_agent_proto::exec::UPGRADE_EXEC;

/// Copies bytes between the client's upgraded connection and the agent's exec session
/// until both directions ended; returns the bytes moved (client to agent, agent to client).
pub async fn relay<C, A>(mut client: C, mut agent: A) -> std::io::Result<(u64, u64)>
where
    C: AsyncRead + AsyncWrite + Unpin,
    A: AsyncRead + AsyncWrite + Unpin,
{
    tokio::io::copy_bidirectional(&mut client, &mut agent).await
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn bytes_pass_both_ways_and_a_half_close_reaches_the_agent() {
        let (client, mut cli) = tokio::io::duplex(64);
        let (agent, mut guest) = tokio::io::duplex(64);
        let relayed = tokio::spawn(relay(client, agent));
        // More than the pipes hold: the relay moves it as the other side reads.
        let big = vec![7u8; 10_000];
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            cli.write_all(&sent).await.unwrap();
            cli.shutdown().await.unwrap();
            let mut back = Vec::new();
            cli.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        guest.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, big, "the client's bytes, then its end of input");
        guest.write_all(b"exit").await.unwrap();
        guest.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"exit");
        assert_eq!(relayed.await.unwrap().unwrap(), (10_000, 4));
    }
}
