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

/// Runs the command line (`serve`, `check`, `status`, `reload`) with `app`
/// as the service every worker serves. `--help` and `--version` name the
/// program by the name it was started as; [`program!`] gives them its own
/// name and version. Returns the process exit code (see [`exit`]).
pub fn main<A: App>(app: A) -> ExitCode {
    Program::from_argv0().main(app)
}

/// The embedding program's name and version, for `--help` and
/// `--version`: `rsvisor::program!().main(app)` takes them from the binary
/// being built (its name, its package's version).
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

/// How the command line presents itself (see [`program!`]).
#[derive(Debug, Clone)]
pub struct Program {
    name: String,
    version: String,
    about: Option<String>,
}

impl Program {
    /// A program called `name`, at `version`.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Program {
        Program {
            name: name.into(),
            version: version.into(),
            about: None,
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

    /// The one-line description `--help` shows.
    pub fn about(mut self, about: impl Into<String>) -> Program {
        self.about = Some(about.into());
        self
    }

    /// Parses the command line and runs it with `app`.
    pub fn main<A: App>(self, app: A) -> ExitCode {
        use clap::{CommandFactory, FromArgMatches};
        let about = match self.about {
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

/// Runs the supervisor from the embedding program's own `main`, with a
/// configuration it built or loaded: no command line is parsed.
///
/// ```no_run
/// let mut config = rsvisor::Config::default();
/// config.server.workers = rsvisor::config::WorkerCount::Fixed(4);
/// let code = rsvisor::Supervisor::new(rsvisor::StaticFiles, config).run();
/// ```
pub struct Supervisor<A> {
    app: A,
    source: ConfigSource,
}

impl<A: App> Supervisor<A> {
    /// With a configuration built in code; a reload (HUP) starts a new
    /// generation with the same configuration. It is checked by the rules a
    /// file is (each key's range, the rules between keys): `run` exits 2
    /// with the key's name when it breaks one.
    pub fn new(app: A, config: Config) -> Supervisor<A> {
        Supervisor {
            app,
            source: ConfigSource::Fixed(Box::new(config)),
        }
    }

    /// With a configuration file, read again on every reload.
    pub fn from_file(app: A, path: impl Into<PathBuf>) -> Supervisor<A> {
        Supervisor {
            app,
            source: ConfigSource::File {
                path: path.into(),
                overrides: Overrides::default(),
            },
        }
    }

    /// Runs the master until it stops; returns its exit code.
    pub fn run(self) -> ExitCode {
        serve(self.app, self.source, None).into()
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
