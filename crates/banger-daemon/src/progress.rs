//! Stage events of a long operation (create, bootstrap), streamed to the client.

use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

/// One stage report of a long operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    pub stage: String,
    pub detail: String,
    pub elapsed_ms: u64,
}

/// Streams stage events of one long operation.
#[derive(Debug, Clone)]
pub struct Progress {
    tx: Option<UnboundedSender<Stage>>,
    start: Instant,
}

impl Progress {
    pub fn new(tx: Option<UnboundedSender<Stage>>) -> Self {
        Self {
            tx,
            start: Instant::now(),
        }
    }

    pub fn stage(&self, stage: &str, detail: impl Into<String>) {
        let detail = detail.into();
        tracing::info!(stage, detail = %detail, "stage");
        if let Some(tx) = &self.tx {
            let _ = tx.send(Stage {
                stage: stage.to_string(),
                detail,
                elapsed_ms: self.start.elapsed().as_millis() as u64,
            });
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}
