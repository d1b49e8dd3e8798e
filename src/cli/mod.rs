//! The command line: its definition, `serve` (from a config to a running
//! master), and the operator's commands that talk to a running master
//! (`status`, `reload`, `dump`, `top`).

mod args;
pub mod client;
pub mod serve;
#[cfg(feature = "top")]
pub mod top;

pub use args::*;
