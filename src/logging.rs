//! Error and event logs through tracing, to stderr, as text or JSON; the
//! level and the format can change on reload.

use std::io::IsTerminal;

use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use crate::config::{LogConfig, LogFormat};

type FilterLayer = reload::Layer<EnvFilter, Registry>;
type Filtered = Layered<FilterLayer, Registry>;
type BoxedFormat = Box<dyn Layer<Filtered> + Send + Sync>;

/// Changes the active log settings (on reload).
pub struct LogHandle {
    handles: Option<(
        reload::Handle<EnvFilter, Registry>,
        reload::Handle<BoxedFormat, Filtered>,
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
    match tracing_subscriber::registry()
        .with(filter)
        .with(format)
        .try_init()
    {
        Ok(()) => LogHandle {
            handles: Some((filter_handle, format_handle)),
        },
        // Already initialised (an embedding program set its own): keep it.
        Err(_) => LogHandle { handles: None },
    }
}
