//! The guest's end of the multiplexer ([`banger_agent_proto::mux`]): each substream the host
//! opens is served like a connection of its own.

use std::future::{Future, poll_fn};
use std::pin::Pin;

use banger_agent_proto::mux::config;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinSet;
use tokio_util::compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

use crate::error_chain;
use crate::server::{Agent, serve_connection};

/// Serves the multiplexed connection `io` until it ends; then every substream still served
/// is dropped (its exec sessions kill their processes). Boxed, since a substream is served
/// by [`serve_connection`], which may lead here again.
pub fn serve<S>(agent: Agent, io: S, peer: String) -> Pin<Box<dyn Future<Output = ()> + Send>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    Box::pin(async move {
        let mut conn = yamux::Connection::new(io.compat(), config(), yamux::Mode::Server);
        let mut streams = JoinSet::new();
        let mut next_id: u64 = 0;
        loop {
            while streams.try_join_next().is_some() {}
            match poll_fn(|cx| conn.poll_next_inbound(cx)).await {
                Some(Ok(stream)) => {
                    next_id += 1;
                    let name = format!("{peer} stream {next_id}");
                    let agent = agent.clone();
                    streams.spawn(async move {
                        if let Err(e) = serve_connection(agent, stream.compat(), &name).await {
                            tracing::debug!("{}", error_chain(&e));
                        }
                    });
                }
                Some(Err(e)) => {
                    tracing::debug!("{peer}: multiplexed connection failed: {}", error_chain(&e));
                    break;
                }
                None => break,
            }
        }
        tracing::debug!("{peer}: multiplexed connection ended");
    })
}
