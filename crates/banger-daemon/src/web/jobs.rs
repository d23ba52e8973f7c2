//! Long operations started from a page (VM create, image bootstrap).
//!
//! A job runs the same service function the JSON route streams, in a task of its own: it
//! belongs to the daemon, not to the request that started it (the form's POST answers at
//! once with a redirect to the job's page), so closing the page does not cancel it; the
//! page's cancel button does ([`Job::cancel`]), and the service then rolls back what it made
//! as it does for a client that goes away. Its stages are kept, so a page opened late (or
//! reloaded, or without JS) shows all of them; [`Job::changed`] wakes the page's event
//! stream on every new stage and at the end. The last [`KEPT_JOBS`] jobs are kept.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use banger_api::ApiError;
use tokio_util::sync::CancellationToken;

use crate::progress::{Progress, Stage};

/// How many jobs (running or ended) are kept for their pages and the dashboard.
pub const KEPT_JOBS: usize = 50;

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It worked: what it made, and the page to see it on.
    Done {
        summary: String,
        href: Option<String>,
    },
    /// The service's error (cancelled included), with the op id.
    Failed { error: ApiError },
}

/// What a job page shows: the stages so far and, once ended, the outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub stages: Vec<Stage>,
    pub outcome: Option<Outcome>,
}

/// One long operation.
#[derive(Debug)]
pub struct Job {
    /// The op id of the request that started it; the job's address.
    pub id: String,
    /// What it does ("create VM web", "bootstrap image debian-bookworm").
    pub title: String,
    pub started: Instant,
    cancel: CancellationToken,
    snapshot: Mutex<Snapshot>,
    changed: tokio::sync::watch::Sender<u64>,
}

impl Job {
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Asks the operation to stop; it rolls back what it made and ends `Failed`
    /// (cancelled). A job that already ended is left as it is.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Wakes on every new stage and at the end.
    pub fn changed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        f(&mut self.snapshot.lock().unwrap_or_else(|e| e.into_inner()));
        self.changed.send_modify(|n| *n += 1);
    }
}

/// The jobs kept.
#[derive(Debug, Default)]
pub struct Jobs {
    jobs: Mutex<VecDeque<Arc<Job>>>,
}

impl Jobs {
    /// Starts `op` (given its progress reporter and cancellation token) as job `id`.
    pub fn start<F, Fut>(&self, id: String, title: String, op: F) -> Arc<Job>
    where
        F: FnOnce(Progress, CancellationToken) -> Fut,
        Fut: Future<Output = Result<Outcome, ApiError>> + Send + 'static,
    {
        let cancel = CancellationToken::new();
        let job = Arc::new(Job {
            id: id.clone(),
            title,
            started: Instant::now(),
            cancel: cancel.clone(),
            snapshot: Mutex::new(Snapshot::default()),
            changed: tokio::sync::watch::Sender::new(0),
        });
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Stage>();
        let fut = op(Progress::new(Some(tx)), cancel);
        let running = job.clone();
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let mut fut = std::pin::pin!(fut);
                let result = loop {
                    tokio::select! {
                        Some(stage) = rx.recv() => running.update(|s| s.stages.push(stage)),
                        result = &mut fut => break result,
                    }
                };
                while let Ok(stage) = rx.try_recv() {
                    running.update(|s| s.stages.push(stage));
                }
                let outcome = match result {
                    Ok(o) => o,
                    Err(mut error) => {
                        error.op_id = running.id.clone();
                        Outcome::Failed { error }
                    }
                };
                running.update(|s| s.outcome = Some(outcome));
            },
            tracing::info_span!("op", op_id = %id),
        ));
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        if jobs.len() == KEPT_JOBS {
            jobs.pop_front();
        }
        jobs.push_back(job.clone());
        job
    }

    pub fn get(&self, id: &str) -> Option<Arc<Job>> {
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.iter().find(|j| j.id == id).cloned()
    }

    /// The jobs kept, newest first.
    pub fn recent(&self) -> Vec<Arc<Job>> {
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_api::ErrorKind;

    async fn ended(job: &Job) -> Snapshot {
        let mut rx = job.changed();
        loop {
            let snap = job.snapshot();
            if snap.outcome.is_some() {
                return snap;
            }
            rx.changed().await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_job_keeps_its_stages_and_outcome_after_the_request() {
        let jobs = Jobs::default();
        let job = jobs.start("op1".into(), "test".into(), |p, _| async move {
            p.stage("one", "a");
            p.stage("two", "b");
            Ok(Outcome::Done {
                summary: "made".into(),
                href: None,
            })
        });
        let snap = ended(&job).await;
        let names: Vec<&str> = snap.stages.iter().map(|s| s.stage.as_str()).collect();
        assert_eq!(names, ["one", "two"]);
        assert!(matches!(snap.outcome, Some(Outcome::Done { .. })));
        assert!(jobs.get("op1").is_some() && jobs.get("op2").is_none());
    }

    #[tokio::test]
    async fn cancel_reaches_the_operation_and_its_error_carries_the_op_id() {
        let jobs = Jobs::default();
        let job = jobs.start("op9".into(), "slow".into(), |p, cancel| async move {
            p.stage("waiting", "");
            cancel.cancelled().await;
            Err(ApiError::new(ErrorKind::Cancelled, "cancelled"))
        });
        job.cancel();
        match ended(&job).await.outcome {
            Some(Outcome::Failed { error }) => {
                assert_eq!(
                    (error.kind, error.op_id.as_str()),
                    (ErrorKind::Cancelled, "op9")
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn only_the_last_jobs_are_kept_newest_first() {
        let jobs = Jobs::default();
        for n in 0..KEPT_JOBS + 3 {
            jobs.start(format!("op{n}"), "x".into(), |_, _| async {
                Err(ApiError::new(ErrorKind::BadRequest, "no"))
            });
        }
        let recent = jobs.recent();
        assert_eq!(recent.len(), KEPT_JOBS);
        assert_eq!(recent[0].id, format!("op{}", KEPT_JOBS + 2));
        assert!(jobs.get("op0").is_none());
    }
}
