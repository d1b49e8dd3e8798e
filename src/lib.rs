//! rsvisor: a pre-fork process supervisor for hyper HTTP services.
//!
//! Hand your app to [`main`] and your binary gets the `rsvisor` command
//! line and supervisor: a master that binds the sockets and forks workers,
//! each running your [`App`] on its own tokio runtime.
//!
//! ```no_run
//! use rsvisor::{Body, Response};
//!
//! fn main() -> std::process::ExitCode {
//!     rsvisor::main(rsvisor::service_fn(|_req| async {
//!         Response::new(Body::from("hello world"))
//!     }))
//! }
//! ```

#![deny(unsafe_code)]

mod app;
mod cli;
pub mod config;
pub mod control;
mod ctl;
pub mod exit;
mod listen;
mod logging;
mod master;
mod material;
mod metrics;
mod netmask;
pub mod outcome;
mod pidfile;
mod procfs;
mod scoreboard;
mod serve;
#[allow(unsafe_code)]
mod sys;
mod systemd;
mod throttle;
mod tls;
mod worker;

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;

pub use app::{
    service_fn, App, Body, BodyError, BoxError, ClientInfo, Handler, Request, RequestBody,
    Response, ServiceFn, StaticFiles, WorkerContext,
};
pub use config::Config;
pub use listen::ListenError;

use cli::{Cli, Command};
use config::Overrides;

/// Runs the rsvisor command line with `app` as the service every worker
/// serves. Returns the process exit code (see [`exit`]).
pub fn main<A: App>(app: A) -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Serve {
            config,
            bind,
            workers,
        } => serve(app, &config, Overrides { bind, workers }),
        Command::Check {
            config,
            bind,
            workers,
        } => check(&config, &Overrides { bind, workers }),
        Command::Status { config, json } => ctl::status(&config, json),
        Command::Reload { config } => ctl::reload(&config),
    };
    ExitCode::from(code as u8)
}

fn check(path: &Path, overrides: &Overrides) -> i32 {
    match material::Loaded::load(path, overrides) {
        Ok(loaded) => {
            print!("{}", loaded.config.render());
            print!("{}", serve::describe_inherited());
            eprintln!("{}: configuration is valid", path.display());
            exit::OK
        }
        Err(e) => {
            eprintln!("{e}");
            exit::CONFIG_ERROR
        }
    }
}

pub use serve::serve;
