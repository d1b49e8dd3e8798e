//! File → environment → flags, each layer checked key by key with the place
//! it came from, then the cross-key checks.

use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

use super::error::{ConfigError, Origin};
use super::keys::{self, SECTIONS};
use super::value::Val;
use super::{AppMode, Config, Origins, Overrides, ReadyRule};

pub const ENV_PREFIX: &str = "RSVISOR_";

pub fn build(
    text: &str,
    path: Option<&Path>,
    env: &[(String, String)],
    overrides: &Overrides,
) -> Result<Config, ConfigError> {
    let file = path
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("<config>"));
    let mut cfg = Config {
        source: path.map(Path::to_path_buf),
        ..Config::default()
    };
    // Where each key got its value, so that cross-key errors can point at it.
    let mut origins = Origins::default();

    apply_file(&mut cfg, text, &file, &mut origins)?;
    apply_env(&mut cfg, env, &mut origins)?;
    apply_overrides(&mut cfg, overrides, &mut origins)?;
    cfg.origins = origins;
    if let Some(dir) = path.and_then(Path::parent) {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        resolve_relative_paths(&mut cfg, &dir);
    }
    if cfg.proxy_mode() && cfg.origins.get("app.ready") == Origin::Default {
        cfg.app.ready = ReadyRule::Socket;
    }
    validate(&cfg)?;
    Ok(cfg)
}

/// Relative paths written in the file are relative to the file's
/// directory, so `rsvisor serve /etc/rsvisor/app.toml` means the same from
/// any working directory. (Values from the environment and flags are
/// relative to the working directory, as a shell user expects.)
fn resolve_relative_paths(cfg: &mut Config, dir: &Path) {
    let from_file = |key: &str| matches!(cfg.origins.get(key), Origin::File { .. });
    let fix = |p: &mut PathBuf| {
        if p.is_relative() {
            *p = dir.join(&*p);
        }
    };
    let fix_addr = |a: &mut super::BindAddr| {
        if let super::BindAddr::Unix(p) = a {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        }
    };
    if from_file("server.bind") {
        let options = std::mem::take(&mut cfg.server.bind_options);
        for a in &mut cfg.server.bind {
            let old = a.clone();
            fix_addr(a);
            if let Some(o) = options.get(&old) {
                cfg.server.bind_options.insert(a.clone(), *o);
            }
        }
    }
    if from_file("metrics.bind") {
        if let Some(a) = &mut cfg.metrics.bind {
            fix_addr(a);
        }
    }
    let paths: [(&str, Option<&mut PathBuf>); 7] = [
        ("app.cwd", cfg.app.cwd.as_mut()),
        ("server.pidfile", cfg.server.pidfile.as_mut()),
        ("server.control_socket", cfg.server.control_socket.as_mut()),
        ("tls.cert", cfg.tls.cert.as_mut()),
        ("tls.key", cfg.tls.key.as_mut()),
        ("tls.client_ca", cfg.tls.client_ca.as_mut()),
        ("app.static_dir", cfg.app.static_dir.as_mut()),
    ];
    for (key, path) in paths {
        if let Some(p) = path {
            if matches!(cfg.origins.get(key), Origin::File { .. }) {
                fix(p);
            }
        }
    }
    if from_file("log.access_log") {
        if let Some(p) = cfg.log.access_log.as_mut().filter(|p| *p != "-") {
            if Path::new(p.as_str()).is_relative() {
                *p = dir.join(p.as_str()).display().to_string();
            }
        }
    }
}

fn apply_file(
    cfg: &mut Config,
    text: &str,
    file: &Path,
    origins: &mut Origins,
) -> Result<(), ConfigError> {
    let at = |span: std::ops::Range<usize>| Origin::file(file, text, span.start);
    let root = DeTable::parse(text).map_err(|e| {
        let origin = at(e.span().unwrap_or(0..0));
        ConfigError::Syntax {
            origin,
            message: first_line(e.message()),
        }
    })?;
    let mut sections: Vec<_> = root.get_ref().iter().collect();
    sections.sort_by_key(|(k, _)| k.span().start);
    for (section, body) in sections {
        let name = section.get_ref().as_ref();
        if !SECTIONS.contains(&name) {
            return Err(ConfigError::Invalid {
                origin: at(section.span()),
                key: name.to_string(),
                message: format!(
                    "unknown section; known sections are {}",
                    SECTIONS.join(", ")
                ),
            });
        }
        let DeValue::Table(table) = body.get_ref() else {
            return Err(ConfigError::Invalid {
                origin: at(body.span()),
                key: name.to_string(),
                message: format!(
                    "expected a table ([{name}]), found {}",
                    Val::from_toml(body.get_ref()).type_name()
                ),
            });
        };
        let mut entries: Vec<_> = table.iter().collect();
        entries.sort_by_key(|(k, _)| k.span().start);
        for (key, value) in entries {
            let key_name = key.get_ref().as_ref();
            let full = format!("{name}.{key_name}");
            let Some(k) = keys::find(name, key_name) else {
                return Err(ConfigError::Invalid {
                    origin: at(key.span()),
                    key: full,
                    message: unknown_key_hint(name, key_name),
                });
            };
            let val = Val::from_toml(value.get_ref());
            (k.set)(cfg, &val).map_err(|message| ConfigError::Invalid {
                origin: at(value.span()),
                key: full.clone(),
                message: message.to_string(),
            })?;
            origins.set(full, at(key.span()));
        }
    }
    Ok(())
}

fn apply_env(
    cfg: &mut Config,
    env: &[(String, String)],
    origins: &mut Origins,
) -> Result<(), ConfigError> {
    let mut vars: Vec<&(String, String)> = env
        .iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    vars.sort();
    for (var, raw) in vars {
        let rest = &var[ENV_PREFIX.len()..];
        let Some(section) = SECTIONS
            .iter()
            .find(|s| rest.to_ascii_lowercase().starts_with(&format!("{s}_")))
        else {
            // Not a config variable (RSVISOR_ is ours, but leave room for
            // variables that are not keys, like a future RSVISOR_UPGRADE_FD).
            continue;
        };
        let key = rest[section.len() + 1..].to_ascii_lowercase();
        let full = format!("{section}.{key}");
        let origin = Origin::Env(var.clone());
        let Some(k) = keys::find(section, &key) else {
            return Err(ConfigError::Invalid {
                origin,
                key: full,
                message: unknown_key_hint(section, &key),
            });
        };
        (k.set)(cfg, &Val::from_env(raw)).map_err(|message| ConfigError::Invalid {
            origin: origin.clone(),
            key: full.clone(),
            message: message.to_string(),
        })?;
        origins.set(full, origin);
    }
    Ok(())
}

fn apply_overrides(
    cfg: &mut Config,
    overrides: &Overrides,
    origins: &mut Origins,
) -> Result<(), ConfigError> {
    let mut flags: Vec<(&str, &str, &str, Val)> = Vec::new();
    if !overrides.bind.is_empty() {
        let val = Val::Array(overrides.bind.iter().cloned().map(Val::Str).collect());
        flags.push(("--bind", "server", "bind", val));
    }
    if let Some(n) = overrides.workers {
        flags.push(("--workers", "server", "workers", Val::Int(n as i64)));
    }
    if !overrides.command.is_empty() {
        let adapted = super::oneline::adapt(&overrides.command);
        let val = Val::Array(adapted.command.into_iter().map(Val::Str).collect());
        flags.push(("-- COMMAND", "app", "command", val));
        // The rule that fits a known server, unless one was written.
        if let Some(rule) = adapted.ready {
            if origins.get("app.ready") == Origin::Default {
                flags.push(("-- COMMAND", "app", "ready", Val::Str(rule.into())));
            }
        }
    }
    for (flag, section, name, val) in flags {
        let origin = Origin::Flag(flag.into());
        let full = format!("{section}.{name}");
        let Some(k) = keys::find(section, name) else {
            continue;
        };
        (k.set)(cfg, &val).map_err(|message| ConfigError::Invalid {
            origin: origin.clone(),
            key: full.clone(),
            message: message.to_string(),
        })?;
        origins.set(full, origin);
    }
    Ok(())
}

/// `key`'s value is refused by a check that involves other keys too: the
/// error names where `key` was set.
fn invalid(cfg: &Config, key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        origin: cfg.origins.get(key),
        key: key.to_string(),
        message: message.into(),
    }
}

/// Checks that involve more than one key.
fn validate(cfg: &Config) -> Result<(), ConfigError> {
    let fail = |key: &str, message: String| invalid(cfg, key, message);
    if cfg.tls.cert.is_some() != cfg.tls.key.is_some() {
        let key = if cfg.tls.cert.is_some() {
            "tls.cert"
        } else {
            "tls.key"
        };
        return Err(fail(
            key,
            "tls.cert and tls.key must be set together".into(),
        ));
    }
    if cfg.tls.client_auth != super::ClientAuth::None && cfg.tls.client_ca.is_none() {
        return Err(fail(
            "tls.client_auth",
            "client certificates need tls.client_ca (the CA that signs them)".into(),
        ));
    }
    if cfg.tls.client_ca.is_some() && cfg.tls.cert.is_none() {
        return Err(fail(
            "tls.client_ca",
            "tls.client_ca needs tls.cert and tls.key".into(),
        ));
    }
    if cfg.tls.cert.is_none()
        && cfg
            .server
            .bind_options
            .values()
            .any(|o| o.tls == Some(true))
    {
        return Err(fail(
            "server.bind",
            "a bind entry has tls = true but tls.cert and tls.key are not set".into(),
        ));
    }
    if cfg.http.http3 {
        check_http3(cfg)?;
    }
    if cfg.tls.early_data {
        check_early_data(cfg)?;
    }
    if cfg.server.group.is_some() && cfg.server.user.is_none() {
        return Err(fail(
            "server.group",
            "server.group needs server.user as well".into(),
        ));
    }
    let paths = [
        ("app.health_path", &cfg.app.health_path),
        ("app.ready_path", &cfg.app.ready_path),
        ("metrics.path", &cfg.metrics.path),
    ];
    for (i, (key, path)) in paths.iter().enumerate() {
        if let Some((other, _)) = paths[..i].iter().find(|(_, p)| p == path) {
            return Err(fail(key, format!("{path:?} is already used by {other}")));
        }
    }
    if cfg.app.command.first().is_some_and(|p| p.trim().is_empty()) {
        return Err(fail(
            "app.command",
            "the program to run is empty, e.g. [\"uvicorn\", \"--fd\", \"3\", \"app:app\"] \
             (an empty list means the built-in app)"
                .into(),
        ));
    }
    check_app_mode(cfg)?;
    if cfg.exec_mode() {
        if cfg.lifecycle.max_requests > 0 && !cfg.proxy_mode() {
            return Err(fail(
                "lifecycle.max_requests",
                "cannot work with app.command in direct mode: the app serves its requests \
                 itself and rsvisor cannot count them; use app.mode = \"proxy\" (rsvisor \
                 forwards and counts every request), or recycle by \
                 lifecycle.max_worker_lifetime or lifecycle.max_worker_memory"
                    .into(),
            ));
        }
        if cfg.app.static_dir.is_some() {
            return Err(fail(
                "app.static_dir",
                "is the built-in app's; with app.command the app serves its own files".into(),
            ));
        }
    } else if cfg.app.cwd.is_some() {
        return Err(fail(
            "app.cwd",
            "is the working directory of app.command, which is not set".into(),
        ));
    }
    if let Some(mbind) = &cfg.metrics.bind {
        if cfg.server.bind.contains(mbind) {
            return Err(fail(
                "metrics.bind",
                format!("{mbind} is also in server.bind; use a separate address"),
            ));
        }
    }
    Ok(())
}

/// `tls.early_data` needs what it works through: HTTP/3, and tickets.
fn check_early_data(cfg: &Config) -> Result<(), ConfigError> {
    let fail = |message: &str| invalid(cfg, "tls.early_data", message);
    if !cfg.http.http3 {
        return Err(fail(
            "0-RTT is served over HTTP/3 only (TLS over TCP never takes early data): set \
             http.http3 = true, or remove tls.early_data",
        ));
    }
    if !cfg.tls.session_tickets {
        return Err(fail(
            "0-RTT resumes a session, and tls.session_tickets = false gives clients none: \
             remove one of the two",
        ));
    }
    Ok(())
}

/// `http.http3` needs a TLS TCP address and rsvisor's own workers in front.
fn check_http3(cfg: &Config) -> Result<(), ConfigError> {
    let fail = |message: &str| invalid(cfg, "http.http3", message);
    if cfg.exec_mode() && !cfg.proxy_mode() {
        return Err(fail(
            "cannot work with app.command in direct mode: the app's own server answers on the \
             port; use app.mode = \"proxy\" (rsvisor's workers serve HTTP/3 and forward)",
        ));
    }
    if cfg.tls_tcp_binds().next().is_none() {
        return Err(fail(
            "needs a TLS address over TCP to serve QUIC on the same port: set tls.cert and \
             tls.key, and a TCP address in server.bind",
        ));
    }
    Ok(())
}

/// `app.mode` against the command's placeholders and the socket paths.
fn check_app_mode(cfg: &Config) -> Result<(), ConfigError> {
    use crate::net::app_socket::{self, FD_PLACEHOLDER, MAX_SOCKET_PATH, SOCKET_PLACEHOLDER};
    let fail = |key: &str, message: String| invalid(cfg, key, message);
    let names = |p: &str| cfg.app.command.iter().any(|a| a.contains(p));
    let proxy = cfg.app.mode == AppMode::Proxy;
    if proxy && !cfg.exec_mode() {
        return Err(fail(
            "app.mode",
            "\"proxy\" forwards to the processes of app.command, which is not set".into(),
        ));
    }
    if !proxy {
        if names(SOCKET_PLACEHOLDER) {
            return Err(fail(
                "app.command",
                "{socket} is an app process's own socket in proxy mode; set app.mode = \"proxy\", \
                 or use {fd} (the inherited descriptor) in direct mode"
                    .into(),
            ));
        }
        if cfg.app.ready == ReadyRule::Socket {
            return Err(fail(
                "app.ready",
                "\"socket\" is proxy mode's rule (app.mode = \"proxy\")".into(),
            ));
        }
        return Ok(());
    }
    if names(FD_PLACEHOLDER) || names("fd://") {
        return Err(fail(
            "app.command",
            "in proxy mode an app process gets no listening descriptor: it listens on {socket} \
             (uvicorn --uds {socket}, gunicorn --bind unix:{socket}, hypercorn --bind unix:{socket})"
                .into(),
        ));
    }
    if !names(SOCKET_PLACEHOLDER) {
        return Err(fail(
            "app.command",
            "proxy mode needs {socket} where the app process should listen (uvicorn --uds \
             {socket} main:app, gunicorn --bind unix:{socket} wsgi:app, hypercorn --bind \
             unix:{socket} main:app)"
                .into(),
        ));
    }
    let base = app_socket::base_dir(cfg.app.socket_dir.as_deref());
    let longest = app_socket::longest_path(&base);
    if longest > MAX_SOCKET_PATH {
        return Err(fail(
            "app.socket_dir",
            format!(
                "{} makes socket paths of up to {longest} bytes; a Unix socket's path holds at \
                 most {MAX_SOCKET_PATH}: choose a shorter directory",
                base.display()
            ),
        ));
    }
    Ok(())
}

fn unknown_key_hint(section: &str, key: &str) -> String {
    let known: Vec<&str> = keys::keys_of(section).map(|k| k.name).collect();
    let close = known
        .iter()
        .find(|k| similar(k, key))
        .map(|k| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default();
    format!(
        "unknown key{close}; keys of [{section}] are {}",
        known.join(", ")
    )
}

/// Cheap typo detection: same length ±1 and at most two differing bytes.
fn similar(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len().abs_diff(b.len()) > 1 {
        return false;
    }
    let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let suffix = a
        .iter()
        .rev()
        .zip(b.iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    prefix + suffix + 2 >= a.len().max(b.len())
}

fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or(message).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WorkerCount;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        build(
            text,
            Some(Path::new("app.toml")),
            &env,
            &Overrides::default(),
        )
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err = load("[server]\nworkers = 2\nworkrs = 3\n", &[]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("app.toml:3:1: server.workrs: unknown key"),
            "{msg}"
        );
    }

    #[test]
    fn wrong_type_points_at_value() {
        let err = load("[server]\n\nbacklog = \"big\"\n", &[]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("app.toml:3:11: server.backlog:"), "{msg}");
    }

    #[test]
    fn env_overrides_file_and_flags_override_env() {
        let cfg = load(
            "[server]\nworkers = 2\n",
            &[
                ("RSVISOR_SERVER_WORKERS", "5"),
                ("RSVISOR_LOG_LEVEL", "debug"),
            ],
        )
        .unwrap();
        assert_eq!(cfg.server.workers, WorkerCount::Fixed(5));
        assert_eq!(cfg.log.level, "debug");
        let cfg = build(
            "[server]\nworkers = 2\n",
            None,
            &[("RSVISOR_SERVER_WORKERS".into(), "5".into())],
            &Overrides {
                workers: Some(7),
                bind: vec!["unix:/tmp/a.sock".into()],
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(cfg.server.workers, WorkerCount::Fixed(7));
        assert_eq!(
            cfg.server.bind,
            vec![super::super::BindAddr::Unix("/tmp/a.sock".into())]
        );
    }

    #[test]
    fn bad_env_value_names_the_variable() {
        let err = load("", &[("RSVISOR_SERVER_WORKERS", "lots")]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("RSVISOR_SERVER_WORKERS"), "{msg}");
        assert!(msg.contains("server.workers"), "{msg}");
    }

    #[test]
    fn syntax_error_has_position() {
        let err = load("[server\nworkers = 2\n", &[]).unwrap_err();
        assert!(err.to_string().starts_with("app.toml:1:"), "{err}");
    }

    #[test]
    fn cross_key_checks() {
        let err = load("[tls]\ncert = \"/a.pem\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("tls.cert"), "{err}");
        let err = load("[app]\nhealth_path = \"/metrics\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("metrics.path"), "{err}");
    }

    #[test]
    fn typo_hint() {
        let err = load("[lifecycle]\ngracefull_timeout = 3\n", &[]).unwrap_err();
        assert!(
            err.to_string().contains("did you mean `graceful_timeout`"),
            "{err}"
        );
    }

    #[test]
    fn app_env_table() {
        let cfg = load("[app]\nenv = { A = \"1\", B = 2 }\n", &[]).unwrap();
        assert_eq!(cfg.app.env.get("B").map(String::as_str), Some("2"));
    }
}
