//! Long operations streamed as NDJSON [`Event`]s: their stages as they happen, then their
//! result or error, with a blank heartbeat line while they have nothing to report. The
//! response body holds the operation's cancellation guard, so a client that goes away cancels
//! the operation, which then rolls back.

use std::convert::Infallible;
use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use banger_api::ApiError;
use banger_api::types::Event;
use tracing::Instrument;

use crate::error::OpError;
use crate::ops::OpId;
use crate::progress::{Progress, Stage};

/// How often a streamed operation writes a blank line while it has nothing to report.
const HEARTBEAT: Duration = Duration::from_millis(500);

/// Runs a long operation in its own task and streams its stages, then its result or error,
/// as NDJSON [`Event`]s. The response body holds the operation's cancellation guard: when the
/// client goes away, hyper drops the body and the operation is cancelled (and rolls back).
/// An error event carries the request's op id, as error bodies do.
pub fn stream_op<T, F, Fut>(op_id: OpId, op: F) -> Response
where
    T: serde::Serialize + Send + 'static,
    F: FnOnce(Progress, tokio_util::sync::CancellationToken) -> Fut,
    Fut: Future<Output = Result<T, OpError>> + Send + 'static,
{
    let (stage_tx, mut stage_rx) = tokio::sync::mpsc::unbounded_channel::<Stage>();
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<Event<T>>();
    let cancel = tokio_util::sync::CancellationToken::new();
    let guard = cancel.clone().drop_guard();
    let fut = op(Progress::new(Some(stage_tx)), cancel);
    tokio::spawn(
        async move {
            let ev = match fut.await {
                Ok(result) => Event::Result { result },
                Err(e) => {
                    let mut error: ApiError = e.into();
                    error.op_id = op_id.0;
                    Event::Error { error }
                }
            };
            let _ = done_tx.send(ev);
        }
        .instrument(tracing::Span::current()),
    );
    // A blank line every HEARTBEAT: hyper only notices a client that went away when it
    // writes, and a quiet phase (waiting for the agent) must still be cancellable.
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    let mut finished = false;
    let line = |v: &dyn erased::Json| {
        let mut l = v.to_json();
        l.push(b'\n');
        Ok::<_, Infallible>(l)
    };
    let stream = futures_util::stream::poll_fn(move |cx| {
        // The guard lives as long as the response body: dropping the body cancels.
        let _keep = &guard;
        if finished {
            return Poll::Ready(None);
        }
        // Stages first, so every stage precedes the result.
        if let Poll::Ready(Some(st)) = stage_rx.poll_recv(cx) {
            let ev: Event<()> = Event::Stage {
                stage: st.stage,
                detail: st.detail,
                elapsed_ms: st.elapsed_ms,
            };
            return Poll::Ready(Some(line(&ev)));
        }
        match std::pin::Pin::new(&mut done_rx).poll(cx) {
            Poll::Ready(Ok(ev)) => {
                // Drain stages sent just before the end.
                if let Ok(st) = stage_rx.try_recv() {
                    let stage: Event<()> = Event::Stage {
                        stage: st.stage,
                        detail: st.detail,
                        elapsed_ms: st.elapsed_ms,
                    };
                    // Put the result back for the next poll.
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    let _ = tx.send(ev);
                    done_rx = rx;
                    return Poll::Ready(Some(line(&stage)));
                }
                finished = true;
                Poll::Ready(Some(line(&ev)))
            }
            Poll::Ready(Err(_)) => Poll::Ready(None),
            Poll::Pending => match heartbeat.poll_tick(cx) {
                Poll::Ready(_) => Poll::Ready(Some(Ok(b"\n".to_vec()))),
                Poll::Pending => Poll::Pending,
            },
        }
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// Object-safe JSON encoding for the stream's two event types.
mod erased {
    pub trait Json {
        fn to_json(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> Vec<u8> {
            serde_json::to_vec(self).unwrap_or_default()
        }
    }
}
