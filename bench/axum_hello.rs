//! bench/run's "axum hello world under rsvisor": the smallest axum app
//! (one route) handed to rsvisor, to compare with the demo's native
//! handler and measure what the tower path costs.
//!
//!     cargo run --release --example axum_hello -- serve app.toml

use axum::routing::get;
use axum::Router;
use rsvisor::{BoxError, WorkerContext};

fn main() -> std::process::ExitCode {
    let app = rsvisor::tower(|_worker: WorkerContext| async {
        Ok::<_, BoxError>(Router::new().route("/", get(|| async { "hello world" })))
    });
    rsvisor::Supervisor::new(app)
        .program(rsvisor::program!())
        .run()
}
