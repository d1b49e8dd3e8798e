//! Connections from a front worker to the app processes: HTTP/1.1 over
//! each process's Unix socket, pooled per process by hyper-util's client.
//! A request is addressed to `http://s{slot}g{generation}/…`, which the
//! connector turns into that process's socket path. The client retries a
//! request only when a pooled connection was found closed before any byte
//! of it was written (an app process closes idle keep-alive connections;
//! uvicorn after 5 s): nothing else is retried.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::UnixStream;

use super::route::Target;
use crate::net::app_socket;

/// How long an idle pooled connection is kept: below uvicorn's default
/// keep-alive timeout (5 s), so that the front closes it first.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(2);

pub type Upstream = Client<AppConnector, super::spool::Outgoing>;

/// The client of one front worker.
pub fn client(run_dir: PathBuf) -> Upstream {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .retry_canceled_requests(true)
        .build(AppConnector {
            run_dir: Arc::new(run_dir),
        })
}

/// The authority that names an app process in a request's URI.
pub fn authority(t: Target) -> String {
    format!("s{}g{}", t.slot, t.generation)
}

fn parse_authority(host: &str) -> Option<Target> {
    let (slot, generation) = host.strip_prefix('s')?.split_once('g')?;
    Some(Target {
        slot: slot.parse().ok()?,
        generation: generation.parse().ok()?,
    })
}

/// Connects to the socket of the app process a URI names.
#[derive(Clone)]
pub struct AppConnector {
    run_dir: Arc<PathBuf>,
}

impl tower::Service<Uri> for AppConnector {
    type Response = AppStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<AppStream>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let target = uri.host().and_then(parse_authority);
        let run_dir = self.run_dir.clone();
        Box::pin(async move {
            let t = target.ok_or_else(|| io::Error::other("not an app process's address"))?;
            let path = app_socket::socket_path(&run_dir, t.slot, t.generation);
            Ok(AppStream(TokioIo::new(UnixStream::connect(path).await?)))
        })
    }
}

/// A connection to an app process.
pub struct AppStream(TokioIo<UnixStream>);

impl Connection for AppStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for AppStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for AppStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_authority_names_slot_and_generation() {
        let t = Target {
            slot: 12,
            generation: 3,
        };
        assert_eq!(parse_authority(&authority(t)), Some(t));
        assert_eq!(parse_authority("example.com"), None);
        assert_eq!(parse_authority("s1gx"), None);
    }
}
