//! A worker process: set up after fork, build the tokio runtime, run the
//! app's startup, accept on the inherited listeners, drain on TERM.

mod accept;
/// Implements `AsyncWrite` for an IO wrapper `$ty<IO>` by passing every
/// call to its `inner` field (the wrappers only change how reads behave).
macro_rules! forward_async_write {
    ($ty:ident) => {
        impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $ty<IO> {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
            }
        }
    };
}
use forward_async_write;

mod access_log;
mod clock;
mod conn;
mod conn_info;
mod endpoints;
mod front;
mod h2_frames;
mod h3;
mod heartbeat;
mod lot;
mod park;
mod proxy;
mod proxy_protocol;
mod readiness;
mod registry;
mod service;
mod shared;
mod sidecar;
mod stream_exec;

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info};

use crate::app::{App, Handler, WorkerContext};
use crate::config::material::Material;
use crate::config::{BindAddr, Config};
use crate::proto::exit::WorkerExit;
use crate::shm::scoreboard::{Board, SlotState};

pub(crate) use shared::Shared;

/// How long the runtime may take to stop its blocking threads (file reads
/// in flight) once the worker has drained.
const RUNTIME_SHUTDOWN_TIMEOUT: Duration = Duration::from_millis(200);

/// What a listening socket is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListenRole {
    /// `server.bind`: the app and the built-in endpoints.
    App,
    /// The same over TLS.
    Tls,
    /// `metrics.bind`: only the metrics endpoint.
    Metrics,
    /// `metrics.bind` in exec mode, served by the sidecar: metrics, and
    /// the fleet's health and readiness.
    Sidecar,
    /// `http.http3`: this worker's UDP socket in the group of a TLS
    /// address (`addr` is the TCP one), at index `seat` of the group
    /// (what its connection IDs name).
    Quic { seat: u16 },
}

/// One listening socket as a worker receives it.
pub(crate) struct BootListener {
    pub addr: BindAddr,
    pub fd: OwnedFd,
    pub role: ListenRole,
    /// Connections start with a PROXY protocol header.
    pub proxy_protocol: bool,
}

/// Everything a freshly forked worker receives from its master.
pub(crate) struct WorkerBoot {
    pub config: Arc<Config>,
    pub material: Arc<Material>,
    pub slot: usize,
    pub generation: u32,
    pub board: &'static Board,
    /// This worker's own descriptors for the listening sockets.
    pub listeners: Vec<BootListener>,
    /// Write end of the master's wake-up pipe.
    pub wake: OwnedFd,
    pub master_pid: Pid,
    /// What the process is for.
    pub role: WorkerRole,
}

/// What a forked worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WorkerRole {
    /// The app.
    App,
    /// Exec mode's helper that serves `metrics.bind`: no app code.
    Sidecar,
    /// Proxy mode: serves the clients and forwards to the app processes.
    Front,
}

/// Type-erased entry point, so the master need not be generic over the app.
pub(crate) trait WorkerMain: Send + Sync {
    fn run(&self, boot: WorkerBoot) -> WorkerExit;
}

/// Why a worker could not get ready to run its app; it then exits with
/// [`WorkerExit::SetupFailed`] (or [`WorkerExit::Orphaned`]).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SetupError {
    #[error("cannot reset signal handlers: {0}")]
    Dispositions(std::io::Error),
    #[error("cannot install its stack-dump handler: {0}")]
    DumpHandler(std::io::Error),
    #[error("cannot drop privileges to {user}: {source}")]
    Privileges {
        user: String,
        source: std::io::Error,
    },
    #[error("cannot set PR_SET_PDEATHSIG: {0}")]
    DeathSignal(nix::Error),
    #[error("its master was gone before it started")]
    Orphaned,
    #[error("cannot close the master's descriptors: {0}")]
    Descriptors(std::io::Error),
    #[error("cannot build its tokio runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot install its signal handlers: {0}")]
    SignalHandlers(std::io::Error),
    #[error("cannot unblock signals: {0}")]
    Unblock(std::io::Error),
    #[error("cannot open the access log: {0}")]
    AccessLog(std::io::Error),
    #[error("cannot use the inherited listeners: {0}")]
    Listeners(std::io::Error),
    #[error("cannot make the epoll set for idle connections: {0}")]
    Lot(std::io::Error),
    #[error("cannot serve HTTP/3: {0}")]
    Quic(#[from] crate::tls::quic::QuicSetupError),
}

impl SetupError {
    /// Logs why (an orphan has nobody to tell) and gives the exit.
    pub(crate) fn report(self) -> WorkerExit {
        if let SetupError::Orphaned = self {
            return WorkerExit::Orphaned;
        }
        error!("worker {self}");
        WorkerExit::SetupFailed
    }
}

pub(crate) struct AppWorker<A>(pub A);

impl<A: App> WorkerMain for AppWorker<A> {
    fn run(&self, boot: WorkerBoot) -> WorkerExit {
        match boot.role {
            // Exec mode's helper: no app code runs in it.
            WorkerRole::Sidecar => run(&sidecar::SidecarApp, boot),
            WorkerRole::Front => {
                let base = crate::net::app_socket::base_dir(boot.config.app.socket_dir.as_deref());
                let run_dir =
                    crate::net::app_socket::run_dir(&base, boot.master_pid.as_raw() as u32);
                run(&front::ProxyApp::new(boot.board, run_dir), boot)
            }
            WorkerRole::App => run(&self.0, boot),
        }
    }
}

fn run<A: App>(app: &A, boot: WorkerBoot) -> WorkerExit {
    match serve_on_own_runtime(app, boot) {
        Ok(exit) => exit,
        Err(e) => e.report(),
    }
}

fn serve_on_own_runtime<A: App>(app: &A, boot: WorkerBoot) -> Result<WorkerExit, SetupError> {
    let threads = boot.config.server.worker_threads;
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    let rt = builder.enable_all().build().map_err(SetupError::Runtime)?;
    let exit = rt.block_on(serve(app, boot));
    rt.shutdown_timeout(RUNTIME_SHUTDOWN_TIMEOUT);
    exit
}

async fn serve<A: App>(app: &A, boot: WorkerBoot) -> Result<WorkerExit, SetupError> {
    let slot = boot.board.slot(boot.slot);
    // The heartbeat runs on the runtime that serves requests: if that
    // runtime is blocked, the master stops seeing beats.
    tokio::spawn(heartbeat::run(slot, boot.master_pid));

    let mut term = signal(SignalKind::terminate()).map_err(SetupError::SignalHandlers)?;
    let mut usr1 = signal(SignalKind::user_defined1()).map_err(SetupError::SignalHandlers)?;
    // Forked with every signal blocked: what the master sent since (a TERM
    // right after the fork) is delivered now, to these handlers.
    crate::os::unblock_all_signals().map_err(SetupError::Unblock)?;
    crate::telemetry::logging::count_suppressed_into(slot);
    let access_log =
        access_log::AccessLog::start(&boot.config.log, slot).map_err(SetupError::AccessLog)?;

    // The drain signal exists before the app starts, so that the app can
    // keep it (`WorkerContext::draining`).
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let ctx = WorkerContext::new(
        boot.config.clone(),
        boot.slot,
        boot.generation,
        stop_rx.clone(),
    );
    let handler = tokio::select! {
        res = app.startup(&ctx) => match res {
            Ok(h) => h,
            Err(e) => {
                error!(error = %e, "app startup failed in worker");
                return Ok(WorkerExit::AppStartupFailed);
            }
        },
        _ = term.recv() => return Ok(WorkerExit::Ok),
    };

    let (quic, tcp): (Vec<_>, Vec<_>) = boot
        .listeners
        .into_iter()
        .partition(|l| matches!(l.role, ListenRole::Quic { .. }));
    let listeners = accept::into_tokio(tcp).map_err(SetupError::Listeners)?;
    let lot = lot::LotTask::new().map_err(SetupError::Lot)?;
    let shared = Arc::new(Shared::new(
        handler,
        shared::SharedParts {
            config: boot.config.clone(),
            material: &boot.material,
            slot,
            requests: &boot.board.in_flight[boot.slot],
            board: boot.board,
            wake: boot.wake,
            access_log,
            readiness: readiness::Readiness::new(ctx.take_checks()),
            sidecar: boot.role == WorkerRole::Sidecar,
            front: boot.role == WorkerRole::Front,
            lot: lot.lot().clone(),
            alt_svc: h3::alt_svc(&quic),
        },
    ));
    tokio::spawn(clock::run_clock(shared.clock.clone()));
    tokio::spawn({
        let (s, stop) = (shared.clone(), stop_rx.clone());
        lot.run(move || s.now_ms(), {
            let s = shared.clone();
            move |parked| conn::resume(&s, &stop, parked)
        })
    });
    for (listener, how) in listeners {
        tokio::spawn(accept::run(listener, how, shared.clone(), stop_rx.clone()));
    }
    h3::start(quic, &shared, &stop_rx)?;
    slot.set_state(SlotState::Ready);
    shared.nudge_master();

    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = usr1.recv() => {
                if let Some(log) = &shared.access_log {
                    log.reopen();
                }
            }
        }
    }

    // Drain: stop accepting (each accept loop drops its descriptor; the
    // socket stays open in the master and the other workers), answer the
    // next request of each kept-alive connection with `Connection: close`,
    // tell the app (long-lived exchanges end), and leave when the last
    // connection is gone, upgraded ones included.
    let graceful = boot.config.lifecycle.graceful_timeout;
    let deadline = tokio::time::Instant::now() + graceful;
    slot.set_state(SlotState::Draining);
    shared.start_draining();
    let _ = stop_tx.send(true);
    info!(
        active_connections = shared.conns.active(),
        upgraded_connections = shared.conns.upgraded(),
        "worker draining"
    );
    // The app's shutdown hook gets what is left, at least its reserve.
    let reserve = (graceful / 10).min(SHUTDOWN_HOOK_RESERVE);
    let _ = tokio::time::timeout_at(deadline - reserve, shared.conns.wait_until_idle()).await;
    run_shutdown_hook(&shared, deadline).await;
    Ok(WorkerExit::Ok)
}

/// What the app's shutdown hook is sure to get of `graceful_timeout`, even
/// when connections use all the rest (at most a tenth of it).
pub const SHUTDOWN_HOOK_RESERVE: Duration = Duration::from_secs(1);

/// Runs `Handler::shutdown` until it returns, panics or `deadline` comes.
async fn run_shutdown_hook<H: Handler>(shared: &Arc<Shared<H>>, deadline: tokio::time::Instant) {
    let s = shared.clone();
    let hook = tokio::spawn(async move { s.handler.shutdown().await });
    match tokio::time::timeout_at(deadline, hook).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) if e.is_panic() => {
            error!("the app's shutdown hook panicked; exiting normally");
        }
        Ok(Err(_)) => {}
        Err(_) => {
            error!("the app's shutdown hook did not finish within lifecycle.graceful_timeout");
        }
    }
}
