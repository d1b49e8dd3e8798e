//! Error and event logs through tracing, to stderr, as text or JSON; the
//! level and the format can change on reload.

use std::hash::{Hash, Hasher};
use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing::subscriber::Interest;
use tracing::Metadata;
use tracing_subscriber::filter::FilterExt;
use tracing_subscriber::layer::{Context, Filter, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use crate::config::{LogConfig, LogFormat};
use crate::shm::scoreboard::Slot;
use crate::telemetry::throttle::Throttle;

/// The libraries a client's bytes reach before rsvisor's code sees them:
/// their lines (rustls warns once per bad handshake, h2 once per bad
/// connection) are written once per `throttle::REPEAT_LOG_INTERVAL` each
/// and otherwise counted, so that no client can fill the disk with them.
const CLIENT_REACHABLE: &[&str] = &[
    "rustls",
    "tokio_rustls",
    "h2",
    "hyper",
    "hyper_util",
    "tungstenite",
    "tokio_tungstenite",
    "tower_http",
];

/// Throttles per kind of line (target, level and place, hashed): a flood of
/// one kind does not hide another, unless two share a bucket.
const LINE_KINDS: usize = 64;
static LINE_THROTTLES: [Throttle; LINE_KINDS] = [const { Throttle::new() }; LINE_KINDS];

/// Where a worker counts the lines left out.
static SUPPRESSED_INTO: OnceLock<&'static Slot> = OnceLock::new();

/// Counts the library lines this process leaves out in `slot` (a worker,
/// after fork).
pub fn count_suppressed_into(slot: &'static Slot) {
    let _ = SUPPRESSED_INTO.set(slot);
}

fn client_reachable(target: &str) -> bool {
    CLIENT_REACHABLE.iter().any(|lib| {
        target
            .strip_prefix(lib)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    })
}

/// Lets one line of each kind through per interval (see `CLIENT_REACHABLE`).
///
/// It runs after the level filter (`init` chains them with `and`, which
/// stops at the first no): a line the configured level drops anyway (h2's
/// warnings under the default `h2=error`) neither uses up its kind's line
/// nor is counted as left out.
struct LibraryThrottle;

impl<S> Filter<S> for LibraryThrottle {
    fn enabled(&self, meta: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        if !meta.is_event() || !client_reachable(meta.target()) {
            return true;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (
            meta.target(),
            meta.level().as_str(),
            meta.file(),
            meta.line(),
        )
            .hash(&mut h);
        if LINE_THROTTLES[h.finish() as usize % LINE_KINDS]
            .admit()
            .is_some()
        {
            return true;
        }
        if let Some(slot) = SUPPRESSED_INTO.get() {
            slot.count_log_line_suppressed();
        }
        false
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        // Asked again for each event of these (the answer changes).
        if client_reachable(meta.target()) {
            Interest::sometimes()
        } else {
            Interest::always()
        }
    }
}

type BoxedFormat = Box<dyn Layer<Registry> + Send + Sync>;

/// Changes the active log settings (on reload).
pub struct LogHandle {
    handles: Option<(
        reload::Handle<EnvFilter, Registry>,
        reload::Handle<BoxedFormat, Registry>,
    )>,
}

impl LogHandle {
    pub fn apply(&self, cfg: &LogConfig) {
        if let Some((filter, format)) = &self.handles {
            let _ = filter.reload(filter_of(cfg));
            let _ = format.reload(format_of(cfg));
        }
    }
}

fn filter_of(cfg: &LogConfig) -> EnvFilter {
    // h2 warns once per misbehaving connection (a reset flood): rsvisor
    // counts those and says them itself, once per interval. A filter that
    // names h2 is taken as it is.
    let level = if cfg.level.contains("h2") {
        cfg.level.clone()
    } else {
        format!("{},h2=error", cfg.level)
    };
    // The config was validated, so the filter parses; fall back to info.
    EnvFilter::try_new(&level).unwrap_or_else(|_| EnvFilter::new("info"))
}

fn format_of(cfg: &LogConfig) -> BoxedFormat {
    match cfg.format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
    }
}

/// Installs the global subscriber. Creates no threads (the master forks).
pub fn init(cfg: &LogConfig) -> LogHandle {
    let (filter, filter_handle) = reload::Layer::new(filter_of(cfg));
    let (format, format_handle) = reload::Layer::new(format_of(cfg));
    // The level filter first, then the throttle (see `LibraryThrottle`);
    // both outside the reloadable format: a filter is registered once.
    match tracing_subscriber::registry()
        .with(format.with_filter(filter.and(LibraryThrottle)))
        .try_init()
    {
        Ok(()) => LogHandle {
            handles: Some((filter_handle, format_handle)),
        },
        // Already initialised (an embedding program set its own): keep it.
        Err(_) => LogHandle { handles: None },
    }
}

#[cfg(test)]
mod tests {
    use super::client_reachable;

    #[test]
    fn the_libraries_a_client_reaches_are_throttled_and_nothing_else() {
        for t in [
            "rustls",
            "rustls::server::hs",
            "h2::proto",
            "hyper_util::server",
        ] {
            assert!(client_reachable(t), "{t}");
        }
        for t in ["rsvisor::worker", "rustlsx", "h2o", "myapp"] {
            assert!(!client_reachable(t), "{t}");
        }
    }
}
