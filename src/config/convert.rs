//! Turning a [`Val`] into the typed value of a key (with a message a user
//! can act on when it does not fit), and a typed value back into the TOML
//! literal `rsvisor check` prints.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::value::Val;
use super::{BindAddr, BindOptions, ValueError};

fn expected(what: &str, v: &Val) -> ValueError {
    format!("expected {what}, found {}", v.type_name()).into()
}

pub fn int_in(v: &Val, min: i64, max: i64) -> Result<i64, ValueError> {
    let n = match v {
        Val::Int(n) => *n,
        Val::Str(s) => s
            .trim()
            .parse::<i64>()
            .map_err(|_| ValueError::from(format!("expected an integer, found {s:?}")))?,
        other => return Err(expected("an integer", other)),
    };
    if n < min || n > max {
        return Err(if max == i64::MAX {
            format!("{n} is out of range: must be at least {min}").into()
        } else {
            format!("{n} is out of range: must be between {min} and {max}").into()
        });
    }
    Ok(n)
}

/// A number (integer or float) between `min` and `max`.
pub fn float_in(v: &Val, min: f64, max: f64) -> Result<f64, ValueError> {
    let x = match v {
        Val::Int(n) => *n as f64,
        Val::Float(f) => *f,
        Val::Str(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| ValueError::from(format!("expected a number, found {s:?}")))?,
        other => return Err(expected("a number", other)),
    };
    if !x.is_finite() || x < min || x > max {
        return Err(format!("{x} is out of range: must be between {min} and {max}").into());
    }
    Ok(x)
}

/// Seconds as an integer or a float; `allow_zero` says whether 0 is meaningful.
pub fn seconds(v: &Val, allow_zero: bool) -> Result<Duration, ValueError> {
    let secs = match v {
        Val::Int(n) => *n as f64,
        Val::Float(f) => *f,
        Val::Str(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| ValueError::from(format!("expected a number of seconds, found {s:?}")))?,
        other => return Err(expected("a number of seconds", other)),
    };
    if !secs.is_finite() || !(0.0..=86_400.0 * 365.0).contains(&secs) {
        return Err(format!(
            "{secs} is out of range: must be a number of seconds between 0 and one year"
        )
        .into());
    }
    if !allow_zero && secs == 0.0 {
        return Err("must be greater than 0 seconds".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

pub fn boolean(v: &Val) -> Result<bool, ValueError> {
    match v {
        Val::Bool(b) => Ok(*b),
        Val::Str(s) if matches!(s.as_str(), "true" | "1" | "yes" | "on") => Ok(true),
        Val::Str(s) if matches!(s.as_str(), "false" | "0" | "no" | "off") => Ok(false),
        Val::Int(1) => Ok(true),
        Val::Int(0) => Ok(false),
        other => Err(format!("expected true or false, found {}", other.show()).into()),
    }
}

pub fn string(v: &Val) -> Result<String, ValueError> {
    match v {
        Val::Str(s) => Ok(s.clone()),
        other => Err(expected("a string", other)),
    }
}

pub fn opt_string(v: &Val) -> Result<Option<String>, ValueError> {
    let s = string(v)?;
    Ok(if s.is_empty() { None } else { Some(s) })
}

pub fn opt_path(v: &Val) -> Result<Option<PathBuf>, ValueError> {
    Ok(opt_string(v)?.map(PathBuf::from))
}

pub fn one_of<'a>(v: &Val, options: &[&'a str]) -> Result<&'a str, ValueError> {
    let s = string(v)?;
    options
        .iter()
        .find(|o| **o == s)
        .copied()
        .ok_or_else(|| format!("{s:?} is not one of {}", options.join(", ")).into())
}

pub fn url_path(v: &Val) -> Result<String, ValueError> {
    let s = string(v)?;
    if !s.starts_with('/') || s.contains(char::is_whitespace) {
        return Err(format!("{s:?} must be a URL path starting with `/`").into());
    }
    Ok(s)
}

/// Octal permission bits, written as a string ("0660") or a TOML octal (0o660).
pub fn opt_mode(v: &Val, max: u32) -> Result<Option<u32>, ValueError> {
    let mode = match v {
        Val::Str(s) if s.is_empty() => return Ok(None),
        Val::Str(s) => {
            let digits = s.trim_start_matches("0o");
            u32::from_str_radix(digits, 8).map_err(|_| {
                ValueError::from(format!("{s:?} is not an octal mode such as \"0660\""))
            })?
        }
        Val::Int(n) if *n >= 0 => *n as u32,
        other => return Err(expected("an octal mode such as \"0660\"", other)),
    };
    if mode > max {
        return Err(format!("{mode:o} is out of range: at most {max:o}").into());
    }
    Ok(Some(mode))
}

/// A size such as `"512MiB"` or a number of bytes; `""` or 0 = none.
pub fn opt_size(v: &Val) -> Result<Option<u64>, ValueError> {
    match v {
        Val::Str(s) if s.is_empty() => Ok(None),
        Val::Str(s) => Ok(Some(super::parse_size(s)?).filter(|n| *n > 0)),
        Val::Int(_) => Ok(Some(int_in(v, 0, i64::MAX)? as u64).filter(|n| *n > 0)),
        other => Err(expected("a size such as \"512MiB\"", other)),
    }
}

pub fn string_list(v: &Val) -> Result<Vec<String>, ValueError> {
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
                )
                .into()),
            })
            .collect(),
        other => Err(expected("a list of strings", other)),
    }
}

/// A table of environment variables (`{ NAME = "value" }`); numbers and
/// booleans are taken as their text.
pub fn env_table(v: &Val) -> Result<BTreeMap<String, String>, ValueError> {
    let Val::Table(entries) = v else {
        return Err(format!(
            "expected a table such as {{ NAME = \"value\" }}, found {}",
            v.type_name()
        )
        .into());
    };
    let mut env = BTreeMap::new();
    for (name, value) in entries {
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            return Err(format!("{name:?} is not an environment variable name").into());
        }
        let value = match value {
            Val::Str(s) => s.clone(),
            Val::Int(i) => i.to_string(),
            Val::Bool(b) => b.to_string(),
            Val::Float(f) => f.to_string(),
            other => {
                return Err(
                    format!("{name}: expected a string, found {}", other.type_name()).into(),
                )
            }
        };
        if value.contains('\0') {
            return Err(format!("{name}: value contains a NUL byte").into());
        }
        env.insert(name.clone(), value);
    }
    Ok(env)
}

/// Bind entries are `"ADDR"` or `{ address = "ADDR", tls = …, proxy_protocol = … }`.
pub fn bind_list(v: &Val) -> Result<(Vec<BindAddr>, BTreeMap<BindAddr, BindOptions>), ValueError> {
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
                )
                .into())
            }
        };
        if out.contains(&addr) {
            return Err(format!("{addr} is listed twice").into());
        }
        if let Some(opts) = opts {
            options.insert(addr.clone(), opts);
        }
        out.push(addr);
    }
    Ok((out, options))
}

fn bind_table(entries: &[(String, Val)]) -> Result<(BindAddr, BindOptions), ValueError> {
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
                )
                .into())
            }
        }
    }
    let addr = addr.ok_or("a bind entry needs `address`")?;
    Ok((addr, opts))
}

pub fn check_allow_entry(entry: &str) -> Result<(), ValueError> {
    if entry == "*" || entry == "unix" {
        return Ok(());
    }
    crate::net::netmask::IpNet::parse(entry)
        .map(|_| ())
        .ok_or_else(|| format!("{entry:?} is not an IP address, a CIDR, \"unix\" or \"*\"").into())
}

// Rendering: typed values back to TOML literals.

/// A TOML string literal.
pub fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

pub fn q_path(p: &Option<impl AsRef<Path>>) -> String {
    q(&p.as_ref()
        .map(|p| p.as_ref().display().to_string())
        .unwrap_or_default())
}

pub fn q_opt(s: &Option<String>) -> String {
    q(s.as_deref().unwrap_or(""))
}

pub fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{}", s as u64)
    } else {
        format!("{s}")
    }
}

/// A float as TOML writes it (always with a decimal point).
pub fn float(x: f64) -> String {
    toml::Value::Float(x).to_string()
}

pub fn mode(m: Option<u32>) -> String {
    q(&m.map(|m| format!("{m:04o}")).unwrap_or_default())
}

pub fn size(b: Option<u64>) -> String {
    q(&b.map(|b| format!("{b}B")).unwrap_or_default())
}

pub fn list<T: ToString>(items: &[T]) -> String {
    let inner: Vec<String> = items.iter().map(|i| q(&i.to_string())).collect();
    format!("[{}]", inner.join(", "))
}

pub fn env(env: &BTreeMap<String, String>) -> String {
    let entries: Vec<String> = env
        .iter()
        .map(|(k, v)| format!("{} = {}", q(k), q(v)))
        .collect();
    if entries.is_empty() {
        "{}".into()
    } else {
        format!("{{ {} }}", entries.join(", "))
    }
}

pub fn binds(bind: &[BindAddr], options: &BTreeMap<BindAddr, BindOptions>) -> String {
    let binds: Vec<String> = bind
        .iter()
        .map(|b| match options.get(b) {
            Some(o) => {
                let tls = o.tls.map(|t| format!(", tls = {t}")).unwrap_or_default();
                format!(
                    "{{ address = {}{tls}, proxy_protocol = {} }}",
                    q(&b.to_string()),
                    o.proxy_protocol
                )
            }
            None => q(&b.to_string()),
        })
        .collect();
    format!("[{}]", binds.join(", "))
}
