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
#![warn(missing_docs)]

mod app;
mod cli;
pub mod config;
mod master;
mod net;
#[allow(unsafe_code)]
mod os;
mod proto;
mod shm;
mod telemetry;
mod tls;
mod worker;

pub use proto::{control, exit, outcome, state};

use proto::exit::Exit;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub use app::{
    service_fn, tower, App, Body, BodyError, BoxError, ClientInfo, Draining, Handler, Request,
    RequestBody, Response, ServiceFn, StaticFiles, TowerApp, TowerHandler, WorkerContext,
};
pub use config::Config;
pub use net::listen::ListenError;

#[cfg(feature = "top")]
use cli::top;
use cli::{client as ctl, Cli, Command};
use config::{ConfigSource, Overrides};

/// `Supervisor::new(app).run()`: the command line (`serve`, `check`,
/// `status`, `reload`, …) with `app` as the service every worker serves.
pub fn main<A: App>(app: A) -> ExitCode {
    Supervisor::new(app).run()
}

/// The embedding program's name and version, for `--help` and
/// `--version`, taken from the binary being built (its name, its package's
/// version): `Supervisor::new(app).program(rsvisor::program!())`.
#[macro_export]
macro_rules! program {
    () => {
        $crate::Program::new(
            match option_env!("CARGO_BIN_NAME") {
                Some(name) => name,
                None => env!("CARGO_PKG_NAME"),
            },
            env!("CARGO_PKG_VERSION"),
        )
    };
}

/// The name and version the command line shows (see [`program!`]).
#[derive(Debug, Clone)]
pub struct Program {
    name: String,
    version: String,
}

impl Program {
    /// A program called `name`, at `version`.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Program {
        Program {
            name: name.into(),
            version: version.into(),
        }
    }

    /// The name the program was started as; the version says what it runs on.
    fn from_argv0() -> Program {
        let name = std::env::args_os()
            .next()
            .map(PathBuf::from)
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "rsvisor".into());
        Program::new(name, format!("(rsvisor {})", env!("CARGO_PKG_VERSION")))
    }

    /// Parses the command line and runs it with `app`.
    fn run_command_line<A: App>(self, about: Option<String>, app: A) -> ExitCode {
        use clap::{CommandFactory, FromArgMatches};
        let about = match about {
            Some(about) => Some(about),
            None if self.name != "rsvisor" => Some(format!(
                "{}: an HTTP service run by the rsvisor pre-fork supervisor (rsvisor {})",
                self.name,
                env!("CARGO_PKG_VERSION")
            )),
            None => None,
        };
        let long_version = cli::long_version(&self.name, &self.version);
        let mut cmd = Cli::command()
            .name(self.name.clone())
            .bin_name(self.name)
            .version(self.version)
            .long_version(long_version);
        if let Some(about) = about {
            cmd = cmd.about(about).long_about(None);
        }
        let cli = match Cli::from_arg_matches(&cmd.clone().get_matches()) {
            Ok(cli) => cli,
            Err(e) => e.exit(),
        };
        let code = match cli.command {
            Command::Serve {
                config,
                bind,
                workers,
                print_config,
                reload,
                reload_dir,
                command,
            } => {
                let overrides = Overrides {
                    bind,
                    workers,
                    command,
                };
                let source = match config {
                    Some(path) => ConfigSource::File { path, overrides },
                    None if overrides.command.is_empty() => {
                        eprintln!(
                            "serve needs a CONFIG file, or the app's command after `--` \
                             (rsvisor serve --bind 127.0.0.1:8000 -- uvicorn app:app)"
                        );
                        return Exit::ConfigError.into();
                    }
                    None => ConfigSource::Flags(overrides),
                };
                if print_config {
                    print_config_of(&source)
                } else {
                    serve(app, source, reload.then_some(reload_dir))
                }
            }
            Command::Check {
                config,
                bind,
                workers,
            } => check(
                &app,
                &config,
                &Overrides {
                    bind,
                    workers,
                    command: Vec::new(),
                },
            ),
            Command::Status { config, json } => ctl::status(&config, json),
            Command::Reload { config } => ctl::reload(&config),
            Command::Dump { config, slot, json } => ctl::dump(&config, slot, json),
            #[cfg(feature = "top")]
            Command::Top {
                config,
                once,
                interval,
            } => top::run(&config, top::Options { once, interval }),
            Command::Completions { shell } => {
                let name = cmd.get_name().to_string();
                clap_complete::generate(shell, &mut cmd, name, &mut std::io::stdout());
                Exit::Ok
            }
            Command::Man => match clap_mangen::Man::new(cmd).render(&mut std::io::stdout()) {
                Ok(()) => Exit::Ok,
                Err(e) => {
                    eprintln!("cannot write the manual page: {e}");
                    Exit::Failure
                }
            },
        };
        code.into()
    }
}

/// The way in: an app, how the program presents itself, and where its
/// configuration comes from; [`run`](Supervisor::run) does the rest.
///
/// Without a configuration it runs the command line (`serve CONFIG`,
/// `check`, `status`, `reload`, `top`, `dump`, …):
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     rsvisor::Supervisor::new(rsvisor::StaticFiles)
///         .program(rsvisor::program!())
///         .run()
/// }
/// ```
///
/// With one (built in code, or a file) it serves it, parsing no command
/// line:
///
/// ```no_run
/// let mut config = rsvisor::Config::default();
/// config.server.workers = rsvisor::config::WorkerCount::Fixed(4);
/// let code = rsvisor::Supervisor::new(rsvisor::StaticFiles).config(config).run();
/// ```
pub struct Supervisor<A> {
    app: A,
    program: Program,
    about: Option<String>,
    source: Option<ConfigSource>,
}

impl<A: App> Supervisor<A> {
    /// `app` in every worker; the program is named as it was started, and
    /// its version is rsvisor's.
    pub fn new(app: A) -> Supervisor<A> {
        Supervisor {
            app,
            program: Program::from_argv0(),
            about: None,
            source: None,
        }
    }

    /// The name and version `--help` and `--version` show (see
    /// [`program!`]).
    pub fn program(mut self, program: Program) -> Supervisor<A> {
        self.program = program;
        self
    }

    /// The one-line description `--help` shows.
    pub fn about(mut self, about: impl Into<String>) -> Supervisor<A> {
        self.about = Some(about.into());
        self
    }

    /// Serve a configuration built in code; a reload (HUP) starts a new
    /// generation with the same configuration. It is checked by the rules
    /// a file is (each key's range, the rules between keys): `run` exits 2
    /// with the key's name when it breaks one.
    pub fn config(mut self, config: Config) -> Supervisor<A> {
        self.source = Some(ConfigSource::Fixed(Box::new(config)));
        self
    }

    /// Serve a configuration file, read again on every reload.
    pub fn config_file(mut self, path: impl Into<PathBuf>) -> Supervisor<A> {
        self.source = Some(ConfigSource::File {
            path: path.into(),
            overrides: Overrides::default(),
        });
        self
    }

    /// Serves the configuration given, or runs the command line; returns
    /// the process exit code (see [`exit`]).
    pub fn run(self) -> ExitCode {
        match self.source {
            Some(source) => serve(self.app, source, None).into(),
            None => self.program.run_command_line(self.about, self.app),
        }
    }
}
/// `serve --print-config`: the configuration `serve` would run, as TOML a
/// file can hold (for a one-line start that goes to production).
fn print_config_of(source: &ConfigSource) -> Exit {
    match source.load() {
        Ok(config) => {
            print!("{}", config.render());
            Exit::Ok
        }
        Err(e) => {
            eprintln!("{e}");
            Exit::ConfigError
        }
    }
}

fn check<A: App>(app: &A, path: &Path, overrides: &Overrides) -> Exit {
    match config::material::Loaded::load(path, overrides) {
        Ok(loaded) => {
            print!("{}", loaded.config.render());
            print!("{}", cli::serve::describe_inherited());
            for w in app.config_warnings(&loaded.config) {
                eprintln!("{}: warning: {w}", path.display());
            }
            if loaded.config.http.http3 {
                // What would otherwise fail only when the first worker
                // serves QUIC.
                if let Err(e) = net::quic_group::probe_steering() {
                    eprintln!("{}: http.http3: {e}", path.display());
                    return Exit::ConfigError;
                }
                eprintln!(
                    "{}: http.http3: datagrams steered by {}",
                    path.display(),
                    net::quic_group::STEERING
                );
                if loaded.config.tls.early_data {
                    eprintln!(
                        "{}: tls.early_data: 0-RTT over HTTP/3 runs GET, HEAD and OPTIONS before \
                         the handshake completes (each may run twice if replayed); sessions \
                         resume once, from a table of {} every worker shares",
                        path.display(),
                        tls::sessions::SESSION_ENTRIES
                    );
                }
            }
            eprintln!("{}: configuration is valid", path.display());
            Exit::Ok
        }
        Err(e) => {
            eprintln!("{e}");
            Exit::ConfigError
        }
    }
}

use cli::serve::serve;
