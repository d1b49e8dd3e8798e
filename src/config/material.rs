//! What a configuration refers to outside itself, loaded and checked: the
//! TLS certificates and keys, the account workers run as. Only `serve`,
//! `check` and a reload load it; `rsvisor status` reads the config alone
//! (it need not be able to read the private key to find the socket).

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, ConfigError};
use crate::tls::TlsMaterial;

/// The account workers run as (`server.user`, `server.group`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, Default)]
pub struct Material {
    pub tls: Option<TlsMaterial>,
    pub run_as: Option<RunAs>,
}

/// A configuration with what it refers to: one generation's settings.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Arc<Config>,
    pub material: Arc<Material>,
}

impl Loaded {
    /// Reads the config file and loads what it refers to.
    pub fn load(
        path: &std::path::Path,
        overrides: &crate::config::Overrides,
    ) -> Result<Loaded, ConfigError> {
        let config = Config::load(path, overrides)?;
        Loaded::from_config(config)
    }

    pub fn from_config(config: Config) -> Result<Loaded, ConfigError> {
        let material = Material::load(&config)?;
        Ok(Loaded {
            config: Arc::new(config),
            material: Arc::new(material),
        })
    }
}

impl Material {
    /// Every error names the key (and the line it was set on).
    pub fn load(cfg: &Config) -> Result<Material, ConfigError> {
        let run_as = resolve_user(cfg)?;
        let tls = load_tls(cfg)?;
        check_static_dir(cfg, run_as.as_ref())?;
        check_command(cfg)?;
        check_socket_dir(cfg)?;
        Ok(Material { tls, run_as })
    }
}

fn invalid(cfg: &Config, key: &str, message: String) -> ConfigError {
    ConfigError::Invalid {
        origin: cfg.origins.get(key),
        key: key.to_string(),
        message,
    }
}

/// Looks `server.user` and `server.group` up in the account database.
fn resolve_user(cfg: &Config) -> Result<Option<RunAs>, ConfigError> {
    let Some(name) = cfg.server.user.clone() else {
        return Ok(None);
    };
    let user = match nix::unistd::User::from_name(&name) {
        Ok(Some(u)) => u,
        Ok(None) => {
            return Err(invalid(
                cfg,
                "server.user",
                format!("no such user {name:?}"),
            ))
        }
        Err(e) => {
            return Err(invalid(
                cfg,
                "server.user",
                format!("cannot look up {name:?}: {e}"),
            ))
        }
    };
    let gid = match &cfg.server.group {
        None => user.gid.as_raw(),
        Some(g) => match nix::unistd::Group::from_name(g) {
            Ok(Some(grp)) => grp.gid.as_raw(),
            Ok(None) => return Err(invalid(cfg, "server.group", format!("no such group {g:?}"))),
            Err(e) => {
                return Err(invalid(
                    cfg,
                    "server.group",
                    format!("cannot look up {g:?}: {e}"),
                ))
            }
        },
    };
    Ok(Some(RunAs {
        user: name,
        uid: user.uid.as_raw(),
        gid,
    }))
}

/// How long the permission check of `app.static_dir` may take.
const ACCESS_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// `app.static_dir` must be a directory the workers can list: otherwise
/// every request would fail (500, or 404 everywhere) while the reload
/// looked fine.
fn check_static_dir(cfg: &Config, run_as: Option<&RunAs>) -> Result<(), ConfigError> {
    let Some(dir) = &cfg.app.static_dir else {
        return Ok(());
    };
    let key = "app.static_dir";
    let shown = dir.display();
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(invalid(cfg, key, format!("{shown} does not exist")));
        }
        Err(e) => return Err(invalid(cfg, key, format!("{shown}: {e}"))),
        Ok(m) if !m.is_dir() => {
            return Err(invalid(cfg, key, format!("{shown} is not a directory")));
        }
        Ok(_) => {}
    }
    let me = nix::unistd::geteuid().as_raw();
    let (allowed, who) = match run_as {
        Some(r) if r.uid != me => (
            crate::os::can_list_as(dir, &r.user, r.uid, r.gid, ACCESS_CHECK_TIMEOUT)
                .map_err(|e| invalid(cfg, key, format!("cannot check {shown}: {e}")))?,
            format!("user {:?} (server.user)", r.user),
        ),
        _ => (
            nix::unistd::access(
                dir.as_path(),
                nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::X_OK,
            )
            .is_ok(),
            "this user".to_string(),
        ),
    };
    if !allowed {
        return Err(invalid(
            cfg,
            key,
            format!("{shown} cannot be read by {who}: workers could not serve from it"),
        ));
    }
    Ok(())
}

/// `app.command` must name a program that exists and can be run, and
/// `app.cwd` a directory: otherwise every worker would fail to start.
fn check_command(cfg: &Config) -> Result<(), ConfigError> {
    let Some(program) = cfg.app.command.first() else {
        return Ok(());
    };
    let cwd = match &cfg.app.cwd {
        Some(dir) => {
            if !dir.is_dir() {
                return Err(invalid(
                    cfg,
                    "app.cwd",
                    format!("{} is not a directory", dir.display()),
                ));
            }
            dir.clone()
        }
        None => std::env::current_dir().unwrap_or_default(),
    };
    let runnable = |p: &std::path::Path| {
        p.is_file() && nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok()
    };
    if program.contains('/') {
        let path = cwd.join(program);
        if !runnable(&path) {
            return Err(invalid(
                cfg,
                "app.command",
                format!("{} is not an executable file", path.display()),
            ));
        }
        return Ok(());
    }
    let search = cfg
        .app
        .env
        .get("PATH")
        .cloned()
        .or_else(|| std::env::var("PATH").ok())
        .unwrap_or_default();
    if search
        .split(':')
        .filter(|d| !d.is_empty())
        .any(|d| runnable(&cwd.join(d).join(program)))
    {
        return Ok(());
    }
    Err(invalid(
        cfg,
        "app.command",
        format!("program {program:?} is not found in PATH ({search}); give its path"),
    ))
}

/// Proxy mode: the master makes the private directory of the app sockets
/// inside `app.socket_dir` when the first app process starts; one that is
/// missing, not a directory or not writable would fail every start.
fn check_socket_dir(cfg: &Config) -> Result<(), ConfigError> {
    if !cfg.proxy_mode() {
        return Ok(());
    }
    let base = crate::net::app_socket::base_dir(cfg.app.socket_dir.as_deref());
    let writable = base.is_dir()
        && nix::unistd::access(
            &base,
            nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
        )
        .is_ok();
    if writable {
        return Ok(());
    }
    Err(invalid(
        cfg,
        "app.socket_dir",
        format!(
            "{} is not a directory rsvisor can create its socket directory in",
            base.display()
        ),
    ))
}

/// Reads and checks the certificate, key and client CA now, so that a bad
/// file is a config error that names its key.
fn load_tls(cfg: &Config) -> Result<Option<TlsMaterial>, ConfigError> {
    TlsMaterial::load(&cfg.tls, cfg.http.http2).map_err(|e| invalid(cfg, e.key(), e.to_string()))
}
