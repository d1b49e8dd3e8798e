//! `rsvisor serve`: load and check the configuration, take or bind the
//! listening sockets, write the pidfile, then hand over to the master.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

use tracing::{error, info, warn};

use crate::app::App;
use crate::config::material::{Loaded, Material};
use crate::config::{BindAddr, Config, ConfigSource};
use crate::master::{self, FD_NAME_CONTROL, FD_NAME_QUIC, FD_NAME_UPGRADE};
use crate::net::listen::{Listener, ListenerSet};
use crate::os::{pidfile, systemd};
use crate::proto::exit::Exit;
use crate::telemetry::logging;
use crate::worker;

/// Sockets handed to this process (systemd socket activation, or the
/// master this one upgrades).
struct Inherited {
    listeners: Vec<Listener>,
    control: Option<OwnedFd>,
    upgrade_pipe: Option<OwnedFd>,
    /// HTTP/3's UDP sockets of the master this one upgrades from.
    quic: Vec<OwnedFd>,
}

fn take_inherited() -> Inherited {
    let mut out = Inherited {
        listeners: Vec::new(),
        control: None,
        upgrade_pipe: None,
        quic: Vec::new(),
    };
    let from_upgrade = std::env::var_os(master::UPGRADE_FROM_ENV).is_some();
    crate::os::unset_env(master::UPGRADE_FROM_ENV);
    for s in systemd::take_listen_fds() {
        match s.name.as_deref() {
            Some(FD_NAME_CONTROL) => out.control = Some(s.fd),
            Some(FD_NAME_UPGRADE) => out.upgrade_pipe = Some(s.fd),
            Some(FD_NAME_QUIC) if from_upgrade => out.quic.push(s.fd),
            _ => match Listener::from_inherited(s.fd, from_upgrade) {
                Ok(l) => out.listeners.push(l),
                Err(e) => warn!(name = ?s.name, error = %e, "ignoring an inherited descriptor"),
            },
        }
    }
    out
}

/// Inherited sockets serve the `server.bind` entries with the same address;
/// the rest of `server.bind` is bound here. Inherited sockets no entry names
/// are served too (systemd asked for them) and returned as extra binds.
fn listen(
    config: &mut Config,
    material: &Material,
    inherited: Vec<Listener>,
) -> Result<(ListenerSet, Vec<BindAddr>), crate::ListenError> {
    let mut set = ListenerSet::default();
    let mut extra = Vec::new();
    for l in inherited {
        info!(socket = %l.addr, "using an inherited listening socket");
        let wanted = config.listen_addrs();
        // A port-0 entry is the socket the master we upgrade from bound
        // for it (the kernel chose its port).
        let port_zero = |a: &BindAddr| match (a, &l.addr) {
            (BindAddr::Tcp(want), BindAddr::Tcp(got)) => {
                want.port() == 0 && want.ip() == got.ip() && set.get(a).is_none()
            }
            _ => false,
        };
        let addr = if wanted.contains(&l.addr) {
            l.addr.clone()
        } else if let Some(a) = wanted.into_iter().find(port_zero) {
            a
        } else {
            warn!(socket = %l.addr, "inherited socket is not in server.bind; serving it anyway");
            config.server.bind.push(l.addr.clone());
            extra.push(l.addr.clone());
            l.addr.clone()
        };
        set.adopt(l, addr);
    }
    let s = &config.server;
    let owner = material.run_as.as_ref().map(|r| (r.uid, r.gid));
    set.ensure(&config.listen_addrs(), s.backlog, s.socket_mode, owner)?;
    Ok((set, extra))
}

/// Loads the config, binds, and runs the master until it stops.
/// `reload`: `serve --reload`, with the `--reload-dir` directories.
pub fn serve<A: App>(app: A, source: ConfigSource, reload: Option<Vec<PathBuf>>) -> Exit {
    // Recorded first: USR2 runs the file at this path again.
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    let args: Vec<OsString> = std::env::args_os().collect();
    let (mut config, material) = match source
        .load()
        .and_then(|c| Material::load(&c).map(|m| (c, m)))
    {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("rsvisor: {e}");
            return Exit::ConfigError;
        }
    };
    let log = logging::init(&config.log);
    for w in app.config_warnings(&config) {
        tracing::warn!("{w}");
    }
    if let Some(mask) = config.server.umask {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
    }
    if let Some(r) = &material.run_as {
        let me = nix::unistd::geteuid();
        if !me.is_root() && me.as_raw() != r.uid {
            error!(
                "server.user = {:?} needs rsvisor to start as root (it runs as uid {me})",
                r.user
            );
            return Exit::ConfigError;
        }
    }
    let inherited = take_inherited();
    let (listeners, extra_binds) = match listen(&mut config, &material, inherited.listeners) {
        Ok(l) => l,
        Err(e) => {
            error!("{e}");
            return Exit::BindFailed;
        }
    };
    let pidfile = match &config.server.pidfile {
        Some(p) => match pidfile::Pidfile::create(p) {
            Ok(f) => Some(f),
            Err(e) => {
                error!("cannot write pidfile {}: {e}", p.display());
                return Exit::Failure;
            }
        },
        None => None,
    };
    let watch = reload.map(|dirs| {
        let file = match &source {
            ConfigSource::File { path, .. } => Some(path.as_path()),
            _ => None,
        };
        master::WatchPlan::for_config(&config, file, &dirs)
    });
    let setup = master::MasterSetup {
        entry: Arc::new(worker::AppWorker(app)),
        loaded: Loaded {
            config: Arc::new(config),
            material: Arc::new(material),
        },
        source,
        listeners,
        log,
        pidfile,
        inherited_control: inherited.control,
        inherited_quic: inherited.quic,
        upgrade_pipe: inherited.upgrade_pipe,
        extra_binds,
        exe,
        args,
        watch,
    };
    match master::Master::new(setup) {
        Ok(m) => m.run(),
        Err(e @ master::MasterError::Control(_)) => {
            error!("{e}");
            Exit::BindFailed
        }
        Err(e) => {
            error!("{e}");
            Exit::Failure
        }
    }
}

/// What `rsvisor check` says about inherited sockets, without taking them.
pub fn describe_inherited() -> String {
    match systemd::listen_fds() {
        systemd::ListenFds::Ours(count) => {
            let mut out = format!("# socket activation: {count} inherited socket(s)\n");
            for i in 0..count {
                let fd = systemd::LISTEN_FDS_START + i;
                let what = crate::os::describe_socket(fd)
                    .unwrap_or_else(|| "not a listening socket".into());
                out += &format!("#   fd {fd}: {what}\n");
            }
            out
        }
        systemd::ListenFds::NotOurs => "# socket activation: LISTEN_FDS is set for another \
                                        process (LISTEN_PID differs); nothing would be \
                                        inherited\n"
            .to_string(),
        systemd::ListenFds::None => {
            "# socket activation: none (no LISTEN_FDS); every address is bound\n".to_string()
        }
    }
}
