//! States the operator sees: what a worker is doing and what the master
//! is doing (`rsvisor status`, `top`, the `rsvisor_workers` gauge), with
//! the same labels and JSON values as the outcomes.

use serde::{Deserialize, Serialize};

use super::outcome::labelled;

labelled! {
    /// A worker as `rsvisor status` shows it.
    pub enum WorkerState {
        /// Started; not accepting yet.
        Booting = "booting",
        /// Accepting and serving.
        Ready = "ready",
        /// Serving until its replacement is ready (max_requests, memory).
        Retiring = "retiring",
        /// Told to drain; finishing in-flight requests.
        Draining = "draining",
        /// Told to stop now (heartbeat timeout, quick stop).
        Stopping = "stopping",
    }
}

labelled! {
    /// What the master is doing, as `rsvisor status` shows it.
    pub enum Phase {
        Running = "running",
        Reloading = "reloading",
        Upgrading = "upgrading",
        Stopping = "stopping",
    }
}
