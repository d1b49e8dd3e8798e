//! `rsvisor top CONFIG`: a live view of the fleet through the control
//! socket, refreshed every interval until `q`, Esc or Ctrl-C. One
//! connection is kept open and asked `status` each interval; the master
//! answers it like any control client (non-blocking, bounded), so a `top`
//! that stops reading cannot stall it. A master that goes away shows
//! "disconnected" and is retried every interval. `--once` prints one frame
//! as plain text (two samples an interval apart, for the rates).

mod model;
mod render;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};

use crate::cli::client::{self as ctl, ControlClient, CtlError};
use crate::proto::control::Request;
use crate::proto::exit::Exit;
use model::Model;

/// How long `top` waits for one answer before it shows "disconnected".
const TOP_ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// `--once` frame width when the terminal's cannot be known.
const DEFAULT_WIDTH: u16 = 120;

/// Shortest and longest `--interval`, in seconds.
const INTERVAL_RANGE: std::ops::RangeInclusive<f64> = 0.05..=3600.0;

pub struct Options {
    pub once: bool,
    /// Seconds between refreshes.
    pub interval: f64,
}

pub fn run(config: &Path, opts: Options) -> Exit {
    if !INTERVAL_RANGE.contains(&opts.interval) {
        eprintln!(
            "rsvisor top: --interval must be between {} and {} seconds",
            INTERVAL_RANGE.start(),
            INTERVAL_RANGE.end()
        );
        return Exit::ConfigError;
    }
    let interval = Duration::from_secs_f64(opts.interval);
    let path = match ctl::socket_of(config) {
        Ok((path, _)) => path,
        Err(e @ CtlError::Config(_)) => {
            eprintln!("rsvisor top: {e}");
            return Exit::ConfigError;
        }
        Err(e) => {
            eprintln!("rsvisor top: {e}");
            return Exit::Failure;
        }
    };
    let mut poller = Poller::new(path);
    if opts.once {
        once(&mut poller, interval)
    } else {
        live(&mut poller, interval)
    }
}

/// Asks the master for its status, keeping one connection.
struct Poller {
    path: PathBuf,
    client: Option<ControlClient>,
    started: Instant,
    model: Model,
}

impl Poller {
    fn new(path: PathBuf) -> Poller {
        Poller {
            path,
            client: None,
            started: Instant::now(),
            model: Model::default(),
        }
    }

    fn poll(&mut self) {
        match self.ask() {
            Ok(status) => self.model.update(status, self.started.elapsed()),
            Err(e) => {
                self.client = None;
                self.model.disconnected(short(&e));
            }
        }
    }

    fn ask(&mut self) -> Result<crate::proto::control::Status, CtlError> {
        if self.client.is_none() {
            self.client = Some(ControlClient::connect(&self.path)?);
        }
        let Some(client) = self.client.as_mut() else {
            return Err(CtlError::Protocol("no connection".into()));
        };
        let resp = client.ask(&Request::Status, TOP_ANSWER_TIMEOUT)?;
        resp.status
            .ok_or_else(|| CtlError::Protocol(resp.error.unwrap_or_default()))
    }
}

/// The cause of a control error, short enough for the title line.
fn short(e: &CtlError) -> String {
    match e {
        CtlError::Connect { source, .. } | CtlError::Io { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}

fn once(poller: &mut Poller, interval: Duration) -> Exit {
    poller.poll();
    if poller.model.view().connected {
        std::thread::sleep(interval);
        poller.poll();
    }
    let view = poller.model.view();
    let width = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .or_else(|| ratatui::crossterm::terminal::size().ok().map(|(w, _)| w))
        .unwrap_or(DEFAULT_WIDTH);
    print!("{}", render::text(&view, width));
    if view.connected {
        Exit::Ok
    } else {
        Exit::Failure
    }
}

fn live(poller: &mut Poller, interval: Duration) -> Exit {
    let mut terminal = match ratatui::try_init() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("rsvisor top: cannot use this terminal ({e}); try --once");
            return Exit::Failure;
        }
    };
    let code = loop {
        poller.poll();
        let view = poller.model.view();
        if let Err(e) = terminal.draw(|f| render::draw(f, &view)) {
            break Err(e);
        }
        match wait_for_keys(interval, || {
            terminal.draw(|f| render::draw(f, &view)).map(|_| ())
        }) {
            Ok(true) => break Ok(()),
            Ok(false) => {}
            Err(e) => break Err(e),
        }
    };
    ratatui::restore();
    match code {
        Ok(()) => Exit::Ok,
        Err(e) => {
            eprintln!("rsvisor top: terminal error: {e}");
            Exit::Failure
        }
    }
}

/// Handles keys until the next refresh; true when the user quits.
/// `redraw` runs on a resize.
fn wait_for_keys(
    interval: Duration,
    mut redraw: impl FnMut() -> std::io::Result<()>,
) -> std::io::Result<bool> {
    let deadline = Instant::now() + interval;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || !event::poll(left)? {
            return Ok(false);
        }
        match event::read()? {
            Event::Key(k) if k.kind == KeyEventKind::Press => {
                let ctrl_c =
                    k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                if ctrl_c || matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) {
                    return Ok(true);
                }
            }
            Event::Resize(..) => redraw()?,
            _ => {}
        }
    }
}
