//! The smallest embedding: every worker answers "hello world".
//!
//!     cargo run --example hello -- serve config.example.toml

use rsvisor::{Body, Response};

fn main() -> std::process::ExitCode {
    rsvisor::main(rsvisor::service_fn(|_req| async {
        Response::new(Body::from("hello world"))
    }))
}
