//! The built-in app: files from `app.static_dir`, served by tower-http's
//! `ServeDir` (content types, HEAD, ranges, Last-Modified / ETag and their
//! conditional requests) through a backend that refuses to leave the root.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use tower_http::services::fs::{Backend, TokioFile};
use tower_http::services::ServeDir;
use tower_service::Service;

use super::{App, Body, BoxError, Handler, Request, Response, WorkerContext};

/// Serves `app.static_dir`. `..` is refused by `ServeDir`; symlinks are
/// followed only when their target stays inside the directory.
#[derive(Clone, Default)]
pub struct StaticFiles;

impl App for StaticFiles {
    type Handler = StaticHandler;

    async fn startup(&self, worker: &WorkerContext) -> Result<StaticHandler, BoxError> {
        let dir = match &worker.config().app.static_dir {
            Some(dir) => Some(tokio::fs::canonicalize(dir).await.map_err(|e| {
                format!(
                    "app.static_dir {}: {e} (it must be an existing directory)",
                    dir.display()
                )
            })?),
            None => None,
        };
        Ok(StaticHandler {
            serve: dir.map(|root| {
                ServeDir::with_backend(
                    root.clone(),
                    ConfinedBackend {
                        root: Arc::new(root),
                    },
                )
            }),
        })
    }
}

pub struct StaticHandler {
    serve: Option<ServeDir<tower_http::services::fs::DefaultServeDirFallback, ConfinedBackend>>,
}

impl Handler for StaticHandler {
    async fn call(&self, req: Request) -> Response {
        let Some(serve) = &self.serve else {
            return http::Response::builder()
                .status(http::StatusCode::NOT_FOUND)
                .body(Body::from("not found\n"))
                .unwrap_or_default();
        };
        let mut serve = serve.clone();
        match serve.call(req).await {
            Ok(resp) => resp.map(Body::stream),
            Err(never) => match never {},
        }
    }
}

/// Filesystem backend that resolves every path (symlinks included) and
/// refuses any whose real location is outside the root.
#[derive(Clone)]
pub struct ConfinedBackend {
    root: Arc<PathBuf>,
}

type BoxFut<T> = Pin<Box<dyn Future<Output = io::Result<T>> + Send>>;

impl ConfinedBackend {
    async fn confine(root: &Path, path: PathBuf) -> io::Result<PathBuf> {
        let real = tokio::fs::canonicalize(&path).await?;
        if real.starts_with(root) {
            Ok(real)
        } else {
            // ServeDir turns PermissionDenied into 404, like a missing file:
            // no hint that something exists outside.
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "path resolves outside app.static_dir",
            ))
        }
    }
}

impl Backend for ConfinedBackend {
    type File = TokioFile;
    type Metadata = std::fs::Metadata;
    type OpenFuture = BoxFut<TokioFile>;
    type MetadataFuture = BoxFut<std::fs::Metadata>;

    fn open(&self, path: PathBuf) -> Self::OpenFuture {
        let root = self.root.clone();
        Box::pin(async move {
            let real = Self::confine(&root, path).await?;
            tower_http::services::fs::TokioBackend.open(real).await
        })
    }

    fn metadata(&self, path: PathBuf) -> Self::MetadataFuture {
        let root = self.root.clone();
        Box::pin(async move {
            let real = Self::confine(&root, path).await?;
            tokio::fs::metadata(real).await
        })
    }
}
