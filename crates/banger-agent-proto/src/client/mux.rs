//! The host's end of the multiplexer ([`crate::mux`]): one virtio-serial stream, many streams.
//!
//! [`connect`] upgrades a stream (the QEMU chardev socket) and starts a task that drives the
//! yamux connection; [`Mux::open`] hands out substreams, each usable like a fresh vsock
//! connection with [`super::health`], [`super::ports`] or [`super::exec::exec`]. Dropping the
//! [`Mux`] closes the connection (yamux's go-away, then the stream is dropped) and so ends
//! every substream on it; the agent then kills the processes of the sessions still running
//! there.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::{ClientError, upgrade};
use crate::mux::{MUX_PATH, UPGRADE_MUX, config};

/// One substream of a [`Mux`]: a byte stream to the agent. It fails (reads and writes end
/// with `ConnectionAborted`) as soon as the multiplexed connection is gone, whatever the state
/// yamux left the substream in.
#[derive(Debug)]
pub struct MuxStream {
    inner: Compat<yamux::Stream>,
    gone: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl MuxStream {
    /// `Ready(error)` once the connection is gone.
    fn poll_gone(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        self.gone.as_mut().poll(cx).map(|()| {
            io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the agent's multiplexed connection is closed",
            )
        })
    }
}

impl AsyncRead for MuxStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Pending => self.poll_gone(cx).map(Err),
            ready => ready,
        }
    }
}

impl AsyncWrite for MuxStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => self.poll_gone(cx).map(Err),
            ready => ready,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.poll_gone(cx).map(Err),
            ready => ready,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_shutdown(cx) {
            Poll::Pending => self.poll_gone(cx).map(Err),
            ready => ready,
        }
    }
}

type OpenReply = oneshot::Sender<Result<yamux::Stream, yamux::ConnectionError>>;

/// A failure opening a substream.
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    #[error("the agent's multiplexed connection is closed")]
    Closed,
    #[error("cannot open a stream on the agent's multiplexed connection")]
    Open(#[source] yamux::ConnectionError),
}

/// A multiplexed connection to an agent.
#[derive(Debug)]
pub struct Mux {
    opens: mpsc::Sender<OpenReply>,
    /// Cancelled when the driver ends, for any reason.
    gone: CancellationToken,
    /// Ends by itself: when the connection fails or, after the `Mux` is dropped, is closed.
    driver: JoinHandle<()>,
}

/// How long closing a dropped [`Mux`] may take (sending yamux's go-away) before the
/// connection is just dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Upgrades `stream` to a multiplexed connection (`GET /mux`), within `timeout`.
pub async fn connect<S>(stream: S, timeout: Duration) -> Result<Mux, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = upgrade(stream, MUX_PATH, UPGRADE_MUX, Some(timeout)).await?;
    let conn = yamux::Connection::new(io.compat(), config(), yamux::Mode::Client);
    let (opens, requests) = mpsc::channel(8);
    let gone = CancellationToken::new();
    let guard = gone.clone().drop_guard();
    let driver = tokio::spawn(async move {
        let _cancel_when_done = guard;
        drive(conn, requests).await;
    });
    Ok(Mux {
        opens,
        gone,
        driver,
    })
}

impl Mux {
    /// Opens a new substream.
    pub async fn open(&self) -> Result<MuxStream, MuxError> {
        let (tx, rx) = oneshot::channel();
        self.opens.send(tx).await.map_err(|_| MuxError::Closed)?;
        match rx.await {
            Ok(Ok(stream)) => Ok(MuxStream {
                inner: stream.compat(),
                gone: Box::pin(self.gone.clone().cancelled_owned()),
            }),
            Ok(Err(e)) => Err(MuxError::Open(e)),
            Err(_) => Err(MuxError::Closed),
        }
    }

    /// Whether the connection has ended (the agent or the transport went away); a closed
    /// `Mux` opens no more streams and should be replaced.
    pub fn is_closed(&self) -> bool {
        self.driver.is_finished()
    }
}

/// Drives the yamux connection: opens the streams asked for and moves every stream's bytes,
/// until the connection ends. The agent opens no streams; any it tries are refused.
async fn drive(
    mut conn: yamux::Connection<Compat<TokioIo<Upgraded>>>,
    mut requests: mpsc::Receiver<OpenReply>,
) {
    let mut pending: Option<OpenReply> = None;
    let handles_gone = poll_fn(|cx| {
        loop {
            if pending.is_none() {
                match requests.poll_recv(cx) {
                    Poll::Ready(Some(reply)) => pending = Some(reply),
                    // Every handle is gone: nobody can use the streams any more.
                    Poll::Ready(None) => return Poll::Ready(true),
                    Poll::Pending => {}
                }
            }
            if let Some(reply) = pending.take() {
                match conn.poll_new_outbound(cx) {
                    Poll::Ready(result) => {
                        let _ = reply.send(result);
                        continue;
                    }
                    Poll::Pending => pending = Some(reply),
                }
            }
            match conn.poll_next_inbound(cx) {
                Poll::Ready(Some(Ok(stream))) => drop(stream),
                Poll::Ready(Some(Err(_))) | Poll::Ready(None) => return Poll::Ready(false),
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await;
    if handles_gone {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, poll_fn(|cx| conn.poll_close(cx))).await;
    }
}
