use std::fmt;
use std::path::{Path, PathBuf};

/// Where a value came from: a place in the file, an environment variable,
/// a command-line flag, or the built-in default.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// A place in a file.
    File {
        /// The file.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        col: usize,
    },
    /// An environment variable (`RSVISOR_SERVER_WORKERS`).
    Env(String),
    /// A command-line flag (`--workers`).
    Flag(String),
    /// The built-in default.
    Default,
}

impl Origin {
    /// Turns a byte offset in `text` into a 1-based line and column.
    pub fn file(file: &Path, text: &str, offset: usize) -> Origin {
        let offset = offset.min(text.len());
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let col = text[line_start..offset].chars().count() + 1;
        Origin::File {
            file: file.to_path_buf(),
            line,
            col,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { file, line, col } => write!(f, "{}:{line}:{col}", file.display()),
            Origin::Env(var) => write!(f, "environment variable {var}"),
            Origin::Flag(flag) => write!(f, "command-line flag {flag}"),
            Origin::Default => f.write_str("default value"),
        }
    }
}

/// What is wrong with one value, in words for the user; whoever reports
/// it adds where the value came from and the key ([`ConfigError::Invalid`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueError(pub String);

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ValueError {}

impl From<String> for ValueError {
    fn from(s: String) -> ValueError {
        ValueError(s)
    }
}

impl From<&str> for ValueError {
    fn from(s: &str) -> ValueError {
        ValueError(s.to_string())
    }
}

/// Why a configuration was refused. The message always starts with the
/// place (`file:line:col`, or the variable or flag) so editors can jump to it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file cannot be read (missing, not a regular file, too large).
    #[error("{}: cannot read the config file: {source}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not TOML.
    #[error("{origin}: TOML syntax error: {message}")]
    Syntax {
        /// Where.
        origin: Origin,
        /// What the TOML parser said.
        message: String,
    },
    /// A key is unknown, or its value is wrong.
    #[error("{origin}: {key}: {message}")]
    Invalid {
        /// Where the value came from.
        origin: Origin,
        /// `section.key`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}
