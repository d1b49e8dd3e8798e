//! What a configuration refers to outside itself, loaded and checked: the
//! TLS certificates and keys, the account workers run as. Only `serve`,
//! `check` and a reload load it; `rsvisor status` reads the config alone
//! (it need not be able to read the private key to find the socket).

use std::sync::Arc;

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

/// Reads and checks the certificate, key and client CA now, so that a bad
/// file is a config error that names its key.
fn load_tls(cfg: &Config) -> Result<Option<TlsMaterial>, ConfigError> {
    TlsMaterial::load(&cfg.tls, cfg.http.http2).map_err(|e| invalid(cfg, e.key(), e.to_string()))
}
