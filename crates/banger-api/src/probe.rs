//! Reachability probes shared by the daemon and the CLI.

use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

/// Waits until something answers on `ip:22` with an SSH banner, or `deadline` passes.
pub async fn wait_ssh(ip: &str, deadline: Duration) -> bool {
    let Ok(addr) = format!("{ip}:22").parse::<std::net::SocketAddr>() else {
        return false;
    };
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        let probe = async {
            let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.ok()?;
            (&buf == b"SSH-").then_some(())
        };
        if let Ok(Some(())) = tokio::time::timeout(Duration::from_secs(3), probe).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn banner_is_required() {
        assert!(!wait_ssh("not an ip", Duration::from_millis(50)).await);
        // Nothing listens on port 22 of this address in the test environment's loopback
        // range, so the probe gives up at the deadline.
        let t = Instant::now();
        assert!(!wait_ssh("127.0.0.2", Duration::from_millis(300)).await);
        assert!(t.elapsed() >= Duration::from_millis(300));
    }
}
