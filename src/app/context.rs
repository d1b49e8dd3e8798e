//! What a worker tells its app: who it is, when it starts draining, and
//! where the app registers its readiness checks.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::BoxError;
use crate::config::Config;

/// A readiness check: resolves `Ok` when the dependency answers.
pub(crate) type CheckFn =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>> + Send + Sync>;

/// A named readiness check registered by the app.
#[derive(Clone)]
pub(crate) struct ReadinessCheck {
    pub name: String,
    pub check: CheckFn,
}

/// What a worker knows about itself, given to [`super::App::startup`]. It
/// is cheap to clone: keep it in the app's state to learn when the worker
/// drains ([`WorkerContext::draining`]).
#[derive(Clone)]
pub struct WorkerContext {
    pub(crate) config: Arc<Config>,
    pub(crate) slot: usize,
    pub(crate) generation: u32,
    pub(crate) drain: Draining,
    pub(crate) checks: Arc<Mutex<Vec<ReadinessCheck>>>,
}

impl WorkerContext {
    pub(crate) fn new(
        config: Arc<Config>,
        slot: usize,
        generation: u32,
        drain: watch::Receiver<bool>,
    ) -> WorkerContext {
        WorkerContext {
            config,
            slot,
            generation,
            drain: Draining(drain),
            checks: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// The configuration this worker's generation was started with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// This worker's scoreboard slot (stable label for per-worker data).
    pub fn slot(&self) -> usize {
        self.slot
    }

    /// The generation (incremented by every reload) this worker belongs to.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// The worker's pid.
    pub fn pid(&self) -> u32 {
        std::process::id()
    }

    /// Completes when this worker starts draining (reload, recycling,
    /// scale-down, TERM): it has stopped accepting, and long-lived
    /// exchanges (WebSockets, server-sent events) should end now, the
    /// WebSocket way with close code 1001 ("going away"). What is still
    /// open when `lifecycle.graceful_timeout` runs out is cut.
    pub fn draining(&self) -> Draining {
        self.drain.clone()
    }

    /// Registers a readiness check: `/ready` answers 200 only while every
    /// check passes, and names each in its JSON (`{"status": "ready",
    /// "checks": {"database": "ok"}}`). Checks run concurrently, each
    /// bounded by `READY_CHECK_TIMEOUT`, and their results are reused for
    /// `READY_CACHE_FOR` so that probes do not hammer the dependencies.
    pub fn readiness_check<F, Fut>(&self, name: impl Into<String>, check: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        let check: CheckFn = Arc::new(move || Box::pin(check()));
        let mut checks = self.checks.lock().unwrap_or_else(|e| e.into_inner());
        checks.push(ReadinessCheck {
            name: name.into(),
            check,
        });
    }

    pub(crate) fn take_checks(&self) -> Vec<ReadinessCheck> {
        let mut checks = self.checks.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *checks)
    }
}

/// Tells the app that its worker drains: `wait().await` completes then,
/// `is_draining()` says whether it has.
#[derive(Clone)]
pub struct Draining(watch::Receiver<bool>);

impl Draining {
    /// Whether the worker has started draining.
    pub fn is_draining(&self) -> bool {
        *self.0.borrow()
    }

    /// Completes once the worker drains (at once if it already does).
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        // An error means the worker is going away: that is draining too.
        let _ = rx.wait_for(|d| *d).await;
    }
}
