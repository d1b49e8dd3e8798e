//! Every configuration key, and the function that checks and stores it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::value::Val;
use super::{
    parse_size, AccessFormat, BindAddr, BindOptions, ClientAuth, Config, LogFormat, WorkerCount,
    MAX_WORKERS,
};

type Setter = fn(&mut Config, &Val) -> Result<(), String>;

/// Section, key, setter. The order is the order of `rsvisor check` output.
pub const KEYS: &[(&str, &str, Setter)] = &[
    ("server", "bind", |c, v| {
        let (addrs, options) = bind_list(v)?;
        c.server.bind = addrs;
        c.server.bind_options = options;
        Ok(())
    }),
    ("server", "workers", |c, v| {
        c.server.workers = match v {
            Val::Str(s) if s == "auto" => WorkerCount::Auto,
            Val::Str(s) => match s.parse::<i64>() {
                Ok(n) => WorkerCount::Fixed(int_in(&Val::Int(n), 1, MAX_WORKERS as i64)? as usize),
                Err(_) => return Err(format!("expected an integer or \"auto\", found {s:?}")),
            },
            Val::Int(_) => WorkerCount::Fixed(int_in(v, 1, MAX_WORKERS as i64)? as usize),
            other => {
                return Err(format!(
                    "expected an integer or \"auto\", found {}",
                    other.type_name()
                ))
            }
        };
        Ok(())
    }),
    ("server", "backlog", |c, v| {
        c.server.backlog = int_in(v, 1, 65535)? as u32;
        Ok(())
    }),
    ("server", "worker_threads", |c, v| {
        c.server.worker_threads = int_in(v, 1, 256)? as usize;
        Ok(())
    }),
    ("server", "pidfile", |c, v| {
        c.server.pidfile = opt_path(v)?;
        Ok(())
    }),
    ("server", "user", |c, v| {
        c.server.user = opt_string(v)?;
        Ok(())
    }),
    ("server", "group", |c, v| {
        c.server.group = opt_string(v)?;
        Ok(())
    }),
    ("server", "umask", |c, v| {
        c.server.umask = opt_mode(v, 0o777)?;
        Ok(())
    }),
    ("server", "socket_mode", |c, v| {
        c.server.socket_mode = opt_mode(v, 0o7777)?;
        Ok(())
    }),
    ("server", "control_socket", |c, v| {
        c.server.control_socket = opt_path(v)?;
        Ok(())
    }),
    ("lifecycle", "timeout", |c, v| {
        c.lifecycle.timeout = seconds(v, false)?;
        Ok(())
    }),
    ("lifecycle", "graceful_timeout", |c, v| {
        c.lifecycle.graceful_timeout = seconds(v, true)?;
        Ok(())
    }),
    ("lifecycle", "max_requests", |c, v| {
        c.lifecycle.max_requests = int_in(v, 0, i64::MAX)? as u64;
        Ok(())
    }),
    ("lifecycle", "max_requests_jitter", |c, v| {
        c.lifecycle.max_requests_jitter = int_in(v, 0, i64::MAX)? as u64;
        Ok(())
    }),
    ("lifecycle", "shutdown_delay", |c, v| {
        c.lifecycle.shutdown_delay = seconds(v, true)?;
        Ok(())
    }),
    ("lifecycle", "max_worker_memory", |c, v| {
        c.lifecycle.max_worker_memory = match v {
            Val::Str(s) if s.is_empty() => None,
            Val::Str(s) => Some(parse_size(s)?).filter(|n| *n > 0),
            Val::Int(_) => Some(int_in(v, 0, i64::MAX)? as u64).filter(|n| *n > 0),
            other => {
                return Err(format!(
                    "expected a size such as \"512MiB\", found {}",
                    other.type_name()
                ))
            }
        };
        Ok(())
    }),
    ("http", "keepalive_timeout", |c, v| {
        c.http.keepalive_timeout = seconds(v, true)?;
        Ok(())
    }),
    ("http", "header_read_timeout", |c, v| {
        c.http.header_read_timeout = seconds(v, false)?;
        Ok(())
    }),
    ("http", "max_header_bytes", |c, v| {
        // hyper's read buffer cannot be smaller than 8 KiB.
        c.http.max_header_bytes = int_in(v, 8192, 1 << 24)? as usize;
        Ok(())
    }),
    ("http", "max_body_bytes", |c, v| {
        c.http.max_body_bytes = int_in(v, 0, i64::MAX)? as u64;
        Ok(())
    }),
    ("http", "limit_concurrency", |c, v| {
        c.http.limit_concurrency = int_in(v, 0, 1 << 20)? as usize;
        Ok(())
    }),
    ("http", "http2", |c, v| {
        c.http.http2 = boolean(v)?;
        Ok(())
    }),
    ("proxy", "proxy_headers", |c, v| {
        c.proxy.proxy_headers = boolean(v)?;
        Ok(())
    }),
    ("proxy", "forwarded_allow_ips", |c, v| {
        let list = string_list(v)?;
        for entry in &list {
            check_allow_entry(entry)?;
        }
        c.proxy.forwarded_allow_ips = list;
        Ok(())
    }),
    ("tls", "cert", |c, v| {
        c.tls.cert = opt_path(v)?;
        Ok(())
    }),
    ("tls", "key", |c, v| {
        c.tls.key = opt_path(v)?;
        Ok(())
    }),
    ("tls", "client_ca", |c, v| {
        c.tls.client_ca = opt_path(v)?;
        Ok(())
    }),
    ("tls", "client_auth", |c, v| {
        c.tls.client_auth = match one_of(v, &["none", "optional", "required"])? {
            "none" => ClientAuth::None,
            "optional" => ClientAuth::Optional,
            _ => ClientAuth::Required,
        };
        Ok(())
    }),
    ("log", "level", |c, v| {
        let level = string(v)?;
        tracing_subscriber::EnvFilter::try_new(&level)
            .map_err(|e| format!("{level:?} is not a level or RUST_LOG filter: {e}"))?;
        c.log.level = level;
        Ok(())
    }),
    ("log", "format", |c, v| {
        c.log.format = match one_of(v, &["text", "json"])? {
            "text" => LogFormat::Text,
            _ => LogFormat::Json,
        };
        Ok(())
    }),
    ("log", "access_log", |c, v| {
        c.log.access_log = opt_string(v)?;
        Ok(())
    }),
    ("log", "access_format", |c, v| {
        c.log.access_format = match one_of(v, &["combined", "json"])? {
            "combined" => AccessFormat::Combined,
            _ => AccessFormat::Json,
        };
        Ok(())
    }),
    ("app", "static_dir", |c, v| {
        c.app.static_dir = opt_path(v)?;
        Ok(())
    }),
    ("app", "health_path", |c, v| {
        c.app.health_path = url_path(v)?;
        Ok(())
    }),
    ("app", "ready_path", |c, v| {
        c.app.ready_path = url_path(v)?;
        Ok(())
    }),
    ("app", "env", |c, v| {
        let Val::Table(entries) = v else {
            return Err(format!(
                "expected a table such as {{ NAME = \"value\" }}, found {}",
                v.type_name()
            ));
        };
        let mut env = std::collections::BTreeMap::new();
        for (name, value) in entries {
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                return Err(format!("{name:?} is not an environment variable name"));
            }
            let value = match value {
                Val::Str(s) => s.clone(),
                Val::Int(i) => i.to_string(),
                Val::Bool(b) => b.to_string(),
                Val::Float(f) => f.to_string(),
                other => {
                    return Err(format!(
                        "{name}: expected a string, found {}",
                        other.type_name()
                    ))
                }
            };
            if value.contains('\0') {
                return Err(format!("{name}: value contains a NUL byte"));
            }
            env.insert(name.clone(), value);
        }
        c.app.env = env;
        Ok(())
    }),
    ("metrics", "enabled", |c, v| {
        c.metrics.enabled = boolean(v)?;
        Ok(())
    }),
    ("metrics", "path", |c, v| {
        c.metrics.path = url_path(v)?;
        Ok(())
    }),
    ("metrics", "bind", |c, v| {
        c.metrics.bind = match opt_string(v)? {
            None => None,
            Some(s) => Some(s.parse::<BindAddr>()?),
        };
        Ok(())
    }),
];

pub const SECTIONS: &[&str] = &[
    "server",
    "lifecycle",
    "http",
    "proxy",
    "tls",
    "log",
    "app",
    "metrics",
];

pub fn find(section: &str, key: &str) -> Option<Setter> {
    KEYS.iter()
        .find(|(s, k, _)| *s == section && *k == key)
        .map(|(_, _, f)| *f)
}

pub fn keys_of(section: &str) -> Vec<&'static str> {
    KEYS.iter()
        .filter(|(s, _, _)| *s == section)
        .map(|(_, k, _)| *k)
        .collect()
}

fn expected(what: &str, v: &Val) -> String {
    format!("expected {what}, found {}", v.type_name())
}

fn int_in(v: &Val, min: i64, max: i64) -> Result<i64, String> {
    let n = match v {
        Val::Int(n) => *n,
        Val::Str(s) => s
            .trim()
            .parse::<i64>()
            .map_err(|_| format!("expected an integer, found {s:?}"))?,
        other => return Err(expected("an integer", other)),
    };
    if n < min || n > max {
        return Err(if max == i64::MAX {
            format!("{n} is out of range: must be at least {min}")
        } else {
            format!("{n} is out of range: must be between {min} and {max}")
        });
    }
    Ok(n)
}

/// Seconds as an integer or a float; `allow_zero` says whether 0 is meaningful.
fn seconds(v: &Val, allow_zero: bool) -> Result<Duration, String> {
    let secs = match v {
        Val::Int(n) => *n as f64,
        Val::Float(f) => *f,
        Val::Str(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| format!("expected a number of seconds, found {s:?}"))?,
        other => return Err(expected("a number of seconds", other)),
    };
    if !secs.is_finite() || !(0.0..=86_400.0 * 365.0).contains(&secs) {
        return Err(format!(
            "{secs} is out of range: must be a number of seconds between 0 and one year"
        ));
    }
    if !allow_zero && secs == 0.0 {
        return Err("must be greater than 0 seconds".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

fn boolean(v: &Val) -> Result<bool, String> {
    match v {
        Val::Bool(b) => Ok(*b),
        Val::Str(s) if matches!(s.as_str(), "true" | "1" | "yes" | "on") => Ok(true),
        Val::Str(s) if matches!(s.as_str(), "false" | "0" | "no" | "off") => Ok(false),
        Val::Int(1) => Ok(true),
        Val::Int(0) => Ok(false),
        other => Err(format!("expected true or false, found {}", other.show())),
    }
}

fn string(v: &Val) -> Result<String, String> {
    match v {
        Val::Str(s) => Ok(s.clone()),
        other => Err(expected("a string", other)),
    }
}

fn opt_string(v: &Val) -> Result<Option<String>, String> {
    let s = string(v)?;
    Ok(if s.is_empty() { None } else { Some(s) })
}

fn opt_path(v: &Val) -> Result<Option<PathBuf>, String> {
    Ok(opt_string(v)?.map(PathBuf::from))
}

fn one_of<'a>(v: &Val, options: &[&'a str]) -> Result<&'a str, String> {
    let s = string(v)?;
    options
        .iter()
        .find(|o| **o == s)
        .copied()
        .ok_or_else(|| format!("{s:?} is not one of {}", options.join(", ")))
}

fn url_path(v: &Val) -> Result<String, String> {
    let s = string(v)?;
    if !s.starts_with('/') || s.contains(char::is_whitespace) {
        return Err(format!("{s:?} must be a URL path starting with `/`"));
    }
    Ok(s)
}

/// Octal permission bits, written as a string ("0660") or a TOML octal (0o660).
fn opt_mode(v: &Val, max: u32) -> Result<Option<u32>, String> {
    let mode = match v {
        Val::Str(s) if s.is_empty() => return Ok(None),
        Val::Str(s) => {
            let digits = s.trim_start_matches("0o");
            u32::from_str_radix(digits, 8)
                .map_err(|_| format!("{s:?} is not an octal mode such as \"0660\""))?
        }
        Val::Int(n) if *n >= 0 => *n as u32,
        other => return Err(expected("an octal mode such as \"0660\"", other)),
    };
    if mode > max {
        return Err(format!("{mode:o} is out of range: at most {max:o}"));
    }
    Ok(Some(mode))
}

fn string_list(v: &Val) -> Result<Vec<String>, String> {
    match v {
        // A single string is accepted as a one-element list; from the
        // environment, commas separate entries.
        Val::Str(s) => Ok(s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()),
        Val::Array(items) => items
            .iter()
            .map(|item| match item {
                Val::Str(s) => Ok(s.clone()),
                other => Err(format!(
                    "expected a list of strings, found {} in the list",
                    other.type_name()
                )),
            })
            .collect(),
        other => Err(expected("a list of strings", other)),
    }
}

/// Entries are `"ADDR"` or `{ address = "ADDR", tls = …, proxy_protocol = … }`.
fn bind_list(v: &Val) -> Result<(Vec<BindAddr>, BTreeMap<BindAddr, BindOptions>), String> {
    let items: Vec<Val> = match v {
        Val::Array(items) => items.clone(),
        Val::Str(_) => string_list(v)?.into_iter().map(Val::Str).collect(),
        other => return Err(expected("a list of addresses", other)),
    };
    if items.is_empty() {
        return Err("needs at least one address".into());
    }
    let mut out: Vec<BindAddr> = Vec::with_capacity(items.len());
    let mut options = BTreeMap::new();
    for item in &items {
        let (addr, opts) = match item {
            Val::Str(s) => (s.parse::<BindAddr>()?, None),
            Val::Table(entries) => {
                let (addr, opts) = bind_table(entries)?;
                (addr, Some(opts))
            }
            other => {
                return Err(format!(
                    "expected an address string or {{ address = \"…\", tls = true }}, found {}",
                    other.type_name()
                ))
            }
        };
        if out.contains(&addr) {
            return Err(format!("{addr} is listed twice"));
        }
        if let Some(opts) = opts {
            options.insert(addr.clone(), opts);
        }
        out.push(addr);
    }
    Ok((out, options))
}

fn bind_table(entries: &[(String, Val)]) -> Result<(BindAddr, BindOptions), String> {
    let mut addr = None;
    let mut opts = BindOptions::default();
    for (k, v) in entries {
        match k.as_str() {
            "address" => addr = Some(string(v)?.parse::<BindAddr>()?),
            "tls" => opts.tls = Some(boolean(v)?),
            "proxy_protocol" => opts.proxy_protocol = boolean(v)?,
            other => {
                return Err(format!(
                    "unknown key `{other}` in a bind entry; bind entries have address, tls \
                     and proxy_protocol"
                ))
            }
        }
    }
    let addr = addr.ok_or("a bind entry needs `address`")?;
    Ok((addr, opts))
}

fn check_allow_entry(entry: &str) -> Result<(), String> {
    if entry == "*" || entry == "unix" {
        return Ok(());
    }
    crate::netmask::IpNet::parse(entry)
        .map(|_| ())
        .ok_or_else(|| format!("{entry:?} is not an IP address, a CIDR, \"unix\" or \"*\""))
}
