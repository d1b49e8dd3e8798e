//! Accept loops on the inherited listening sockets.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tracing::warn;

use super::conn;
use super::conn_info::{How, Peer};
use super::{BootListener, Shared};
use crate::app::Handler;
use crate::config::BindAddr;
use crate::proto::outcome::AcceptError;
use crate::telemetry::throttle::Throttle;

/// Pause after an accept error that retrying at once cannot fix (out of
/// descriptors or memory), so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

pub fn into_tokio(fds: Vec<BootListener>) -> io::Result<Vec<(Listener, How)>> {
    fds.into_iter()
        .map(|l| {
            let how = How {
                role: l.role,
                proxy_protocol: l.proxy_protocol,
            };
            let listener = match l.addr {
                BindAddr::Tcp(_) => {
                    TcpListener::from_std(std::net::TcpListener::from(l.fd)).map(Listener::Tcp)
                }
                BindAddr::Unix(_) => {
                    UnixListener::from_std(std::os::unix::net::UnixListener::from(l.fd))
                        .map(Listener::Unix)
                }
            }?;
            Ok((listener, how))
        })
        .collect()
}

/// Accepts until `stop` turns true, then drops this worker's descriptor.
pub async fn run<H: Handler>(
    listener: Listener,
    how: How,
    shared: Arc<Shared<H>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.changed() => break,
            res = accept(&listener) => res,
        };
        match accepted {
            Ok(Accepted::Tcp(stream, addr)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(conn::serve(
                    stream,
                    Peer::Tcp(addr),
                    how,
                    shared.clone(),
                    stop.clone(),
                ));
            }
            Ok(Accepted::Unix(stream)) => {
                tokio::spawn(conn::serve(
                    stream,
                    Peer::Unix,
                    how,
                    shared.clone(),
                    stop.clone(),
                ));
            }
            Err(e) if is_transient(&e) => {}
            Err(e) => {
                let reason = accept_error(&e);
                shared.slot.count_accept_error(reason);
                if let Some(suppressed) = ACCEPT_ERRORS.admit() {
                    warn!(
                        error = %e,
                        %reason,
                        suppressed,
                        "accept failed; pausing {ACCEPT_ERROR_BACKOFF:?} \
                         (counted in rsvisor_accept_errors_total)"
                    );
                }
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
}

enum Accepted {
    Tcp(tokio::net::TcpStream, std::net::SocketAddr),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> io::Result<Accepted> {
    match listener {
        Listener::Tcp(l) => l.accept().await.map(|(s, a)| Accepted::Tcp(s, a)),
        Listener::Unix(l) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
    }
}

static ACCEPT_ERRORS: Throttle = Throttle::new();

fn accept_error(e: &io::Error) -> AcceptError {
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE) => AcceptError::Descriptors,
        Some(libc::ENOMEM | libc::ENOBUFS) => AcceptError::Memory,
        _ => AcceptError::Other,
    }
}

/// Errors about one connection that died before we accepted it.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}
