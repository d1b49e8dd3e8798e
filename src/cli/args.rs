//! Command-line interface (clap).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The TLS library and crypto provider this build uses (`--version`).
#[cfg(feature = "tls-ring")]
pub const TLS_PROVIDER: &str = "rustls with ring";
#[cfg(not(feature = "tls-ring"))]
pub const TLS_PROVIDER: &str = "rustls with aws-lc-rs";

/// What `--version` prints after the program's name: its version, and for
/// a program that embeds rsvisor, rsvisor's on a second line.
pub fn long_version(name: &str, version: &str) -> String {
    let rsvisor = env!("CARGO_PKG_VERSION");
    if name == "rsvisor" {
        format!("{version} (TLS: {TLS_PROVIDER})")
    } else {
        format!("{version}\nrsvisor {rsvisor} (TLS: {TLS_PROVIDER})")
    }
}

#[derive(Debug, Parser)]
#[command(
    version,
    about = "A pre-fork process supervisor for HTTP services",
    long_about = "A master process binds the listening sockets and forks workers that \
                  serve HTTP with hyper; it keeps them healthy and reloads them without \
                  dropping a request (kill -HUP)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the master and its workers in the foreground.
    ///
    /// Without CONFIG, the defaults, the environment and the flags make the
    /// configuration: `rsvisor serve --bind 127.0.0.1:8000 --workers 4 --
    /// uvicorn app:app` (uvicorn, hypercorn and gunicorn get the socket
    /// argument and a readiness rule; `{fd}` or `{socket}` in the arguments
    /// place it yourself).
    Serve {
        /// The TOML configuration file (optional with a command after --).
        config: Option<PathBuf>,
        /// Listen on ADDR instead of server.bind (repeatable):
        /// HOST:PORT, [V6]:PORT or unix:/path.sock.
        #[arg(long = "bind", value_name = "ADDR")]
        bind: Vec<String>,
        /// Number of workers (overrides server.workers).
        #[arg(long, value_name = "N")]
        workers: Option<usize>,
        /// Print the configuration this would run, as TOML, and exit.
        #[arg(long)]
        print_config: bool,
        /// Development: reload (health-gated, as on HUP) when the app's
        /// files change: the command's directory (app.cwd), the static
        /// directory and the config file; a rebuilt executable of a
        /// program that is its own app is re-executed (as on USR2).
        #[arg(long)]
        reload: bool,
        /// Watch DIR instead of the default directories (repeatable;
        /// needs --reload).
        #[arg(long, value_name = "DIR", requires = "reload")]
        reload_dir: Vec<PathBuf>,
        /// The app's command (exec mode; overrides app.command).
        #[arg(last = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Show the master's workers (pid, generation, state, requests,
    /// memory…) through server.control_socket.
    Status {
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Reload through server.control_socket and wait until it finished;
    /// exit 0 if the new generation serves, 5 if the reload was refused,
    /// abandoned or rolled back.
    Reload { config: PathBuf },
    /// A live view of the fleet through server.control_socket (q, Esc or
    /// Ctrl-C quits).
    #[cfg(feature = "top")]
    Top {
        config: PathBuf,
        /// Print one frame as plain text and exit (rates over one interval).
        #[arg(long)]
        once: bool,
        /// Seconds between refreshes.
        #[arg(long, value_name = "SECONDS", default_value = "1")]
        interval: f64,
    },
    /// Print the stacks of every thread of the worker in SLOT (see
    /// `status`) and its requests in flight; the worker keeps serving.
    Dump {
        config: PathBuf,
        slot: usize,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Validate the configuration and print the effective settings
    /// (exit 0), or print the error with file:line:col (exit 2).
    Check {
        /// The TOML configuration file.
        config: PathBuf,
        #[arg(long = "bind", value_name = "ADDR")]
        bind: Vec<String>,
        #[arg(long, value_name = "N")]
        workers: Option<usize>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish,
    /// powershell), e.g. `rsvisor completions bash >
    /// /etc/bash_completion.d/rsvisor`.
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff), e.g. `rsvisor man | man -l -`.
    Man,
}
