//! The built-in app: files from `app.static_dir`, served by tower-http's
//! `ServeDir` (content types, HEAD, ranges, Last-Modified / ETag and their
//! conditional requests) through a backend of our own that
//!
//! - refuses any path whose real location (symlinks resolved) is outside
//!   the directory, and
//! - keeps what it learnt about each path for [`REVALIDATE_AFTER`]: the
//!   resolved path, the metadata, and the bytes of files up to
//!   [`CACHE_FILE_MAX`], like nginx's `open_file_cache`. A change on disk is
//!   seen within that time.
//!
//! Files are read synchronously on the worker's thread (as nginx does
//! without `aio`): for files in the page cache that is far cheaper than a
//! hop to a blocking thread pool for every open, stat and read.
//!
//! A plain `GET` or `HEAD` of a cached file (no `Range`, no conditional
//! headers, a path that needs no decoding) is answered straight from the
//! cache with the headers `ServeDir` would send (same `ETag` and
//! `Last-Modified`); everything else goes through `ServeDir`.

use std::collections::HashMap;
use std::future::{ready, Ready};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{
    HeaderValue, ACCEPT_ENCODING, ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_TYPE, ETAG, IF_MATCH,
    IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_UNMODIFIED_SINCE, LAST_MODIFIED, RANGE,
};
use http::Method;
use tokio::io::{AsyncRead, AsyncSeek, ReadBuf};
use tower_http::services::fs::{Backend, DefaultServeDirFallback, File, Metadata};
use tower_http::services::ServeDir;
use tower_service::Service;

use super::{App, Body, BoxError, Handler, Request, Response, WorkerContext};

/// How long a path's resolution, metadata and cached bytes are trusted.
pub const REVALIDATE_AFTER: Duration = Duration::from_secs(1);
/// Files up to this size are kept in memory.
pub const CACHE_FILE_MAX: u64 = 1024 * 1024;
/// Paths remembered per worker; beyond that the cache starts over.
pub const CACHE_ENTRIES_MAX: usize = 10_000;
/// Bytes of file contents kept per worker; beyond that the cache starts over.
pub const CACHE_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// Serves `app.static_dir`. `..` is refused by `ServeDir`; symlinks are
/// followed only when their target stays inside the directory.
#[derive(Clone, Default)]
pub struct StaticFiles;

impl App for StaticFiles {
    type Handler = StaticHandler;

    fn config_warnings(&self, config: &crate::Config) -> Vec<String> {
        if config.app.static_dir.is_none() && config.app.command.is_empty() {
            return vec![
                "no app is configured (neither app.static_dir nor app.command): every request \
                 but the health, readiness and metrics paths gets 404"
                    .into(),
            ];
        }
        Vec::new()
    }

    async fn startup(&self, worker: &WorkerContext) -> Result<StaticHandler, BoxError> {
        let dir = match &worker.config().app.static_dir {
            Some(dir) => Some(std::fs::canonicalize(dir).map_err(|e| {
                format!(
                    "app.static_dir {}: {e} (it must be an existing directory)",
                    dir.display()
                )
            })?),
            None => None,
        };
        Ok(StaticHandler {
            serve: dir.map(|root| {
                let cache = Arc::new(Cache {
                    root: root.clone(),
                    entries: Mutex::new(Entries::default()),
                    by_uri: Mutex::new(HashMap::new()),
                });
                let backend = CachedBackend {
                    inner: cache.clone(),
                };
                // `file.gz`, `file.br`, `file.zst` next to a file are served
                // as they are to clients that accept them.
                let serve = ServeDir::with_backend(root, backend)
                    .precompressed_gzip()
                    .precompressed_br()
                    .precompressed_zstd();
                (serve, cache)
            }),
        })
    }
}

pub struct StaticHandler {
    serve: Option<(ServeDir<DefaultServeDirFallback, CachedBackend>, Arc<Cache>)>,
}

impl Handler for StaticHandler {
    // The answer is settled before the future where it can be (not found,
    // the cached fast path), so that the future holds a response or a box,
    // never the request: an `async fn` would hold it twice, moved whole on
    // every request.
    #[allow(clippy::manual_async_fn)]
    fn call(&self, mut req: Request) -> impl std::future::Future<Output = Response> + Send {
        let settled = match &self.serve {
            None => Ok(http::Response::builder()
                .status(http::StatusCode::NOT_FOUND)
                .body(Body::from("not found\n"))
                .unwrap_or_default()),
            Some((serve, cache)) => match cache.fast_path(&req) {
                Some(resp) => Ok(resp),
                None => {
                    let clamped = req
                        .headers()
                        .get(RANGE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| super::range::normalize(v, cache.plain_len(&req)))
                        .and_then(|v| HeaderValue::from_str(&v).ok());
                    if let Some(v) = clamped {
                        req.headers_mut().insert(RANGE, v);
                    }
                    // Boxed: tower-http's future is big.
                    Err(Box::pin(serve.clone().call(req)))
                }
            },
        };
        async move {
            match settled {
                Ok(resp) => resp,
                Err(file) => match file.await {
                    Ok(resp) => resp.map(Body::stream),
                    Err(never) => match never {},
                },
            }
        }
    }
}

/// What the backend knows about one file or directory.
#[derive(Clone, Debug)]
pub struct Meta {
    is_dir: bool,
    len: u64,
    modified: Option<SystemTime>,
}

impl Metadata for Meta {
    fn is_dir(&self) -> bool {
        self.is_dir
    }

    fn modified(&self) -> io::Result<SystemTime> {
        self.modified
            .ok_or_else(|| io::Error::other("modification time unavailable"))
    }

    fn len(&self) -> u64 {
        self.len
    }
}

struct Known {
    real: PathBuf,
    meta: Meta,
    data: Option<Bytes>,
    /// A precompressed sibling exists (`.gz`, `.br`, `.zst`).
    precompressed: bool,
    /// Response headers for the fast path, made once per revalidation.
    headers: Option<FastHeaders>,
}

#[derive(Clone)]
struct FastHeaders {
    content_type: HeaderValue,
    content_length: HeaderValue,
    last_modified: Option<HeaderValue>,
    etag: Option<HeaderValue>,
}

impl FastHeaders {
    /// The headers `ServeDir` sends for a whole file (same formats).
    fn new(path: &Path, meta: &Meta) -> FastHeaders {
        let content_type = mime_guess::from_path(path)
            .first_raw()
            .map(HeaderValue::from_static)
            .unwrap_or_else(|| HeaderValue::from_static("application/octet-stream"));
        let since_epoch = meta
            .modified
            .and_then(|m| m.duration_since(SystemTime::UNIX_EPOCH).ok());
        FastHeaders {
            content_type,
            content_length: HeaderValue::from(meta.len),
            last_modified: meta
                .modified
                .and_then(|m| HeaderValue::from_str(&httpdate::fmt_http_date(m)).ok()),
            etag: since_epoch.and_then(|d| {
                HeaderValue::from_str(&format!(
                    "\"{:x}.{:08x}-{:x}\"",
                    d.as_secs(),
                    d.subsec_nanos(),
                    meta.len
                ))
                .ok()
            }),
        }
    }
}

/// A request path the cache may answer for: relative, no `%`, `\\`,
/// NUL, empty, `.` or `..` segment (anything else goes to `ServeDir`).
fn plain_relative(path: &str) -> Option<&str> {
    let rel = path.strip_prefix('/')?;
    let odd = rel.is_empty()
        || path.ends_with('/')
        || path.bytes().any(|b| matches!(b, b'%' | b'\\' | 0))
        || rel
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..");
    (!odd).then_some(rel)
}

struct Entry {
    checked: Instant,
    found: Result<Arc<Known>, io::ErrorKind>,
}

impl Entry {
    fn data_len(&self) -> u64 {
        self.found
            .as_ref()
            .ok()
            .and_then(|k| k.data.as_ref())
            .map_or(0, |d| d.len() as u64)
    }
}

/// The entries by file path, with the bytes they hold kept as a running
/// total (not summed again on every miss).
#[derive(Default)]
struct Entries {
    map: HashMap<PathBuf, Entry>,
    bytes: u64,
}

impl Entries {
    fn insert(&mut self, path: PathBuf, entry: Entry) {
        self.bytes += entry.data_len();
        if let Some(old) = self.map.insert(path, entry) {
            self.bytes -= old.data_len();
        }
    }

    fn clear(&mut self) {
        self.map.clear();
        self.bytes = 0;
    }
}

struct Cache {
    root: PathBuf,
    entries: Mutex<Entries>,
    /// The same, keyed by request path (fast path: no path building).
    by_uri: Mutex<HashMap<Box<str>, Checked>>,
}

/// A known file and when it was last checked.
type Checked = (Instant, Arc<Known>);

#[derive(Clone)]
pub struct CachedBackend {
    inner: Arc<Cache>,
}

impl Cache {
    /// Answers a plain GET or HEAD of a cached file, or leaves it to
    /// `ServeDir` (None).
    fn fast_path(&self, req: &Request) -> Option<Response> {
        let head = match *req.method() {
            Method::GET => false,
            Method::HEAD => true,
            _ => return None,
        };
        let rel = plain_relative(req.uri().path())?;
        let h = req.headers();
        let known = self.lookup_uri(rel)?;
        if known.precompressed && h.contains_key(ACCEPT_ENCODING) {
            // ServeDir picks the encoding.
            return None;
        }
        if h.contains_key(RANGE)
            || h.contains_key(IF_NONE_MATCH)
            || h.contains_key(IF_MODIFIED_SINCE)
            || h.contains_key(IF_MATCH)
            || h.contains_key(IF_UNMODIFIED_SINCE)
        {
            return None;
        }
        let (data, fh) = (known.data.as_ref()?, known.headers.as_ref()?);
        let mut resp = Response::new(if head {
            Body::empty()
        } else {
            Body::from(data.clone())
        });
        let hm = resp.headers_mut();
        hm.insert(CONTENT_TYPE, fh.content_type.clone());
        hm.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        if let Some(v) = &fh.last_modified {
            hm.insert(LAST_MODIFIED, v.clone());
        }
        if let Some(v) = &fh.etag {
            hm.insert(ETAG, v.clone());
        }
        hm.insert(CONTENT_LENGTH, fh.content_length.clone());
        Some(resp)
    }

    /// The length of the file a request names, when it is a plain file
    /// served as it is (no precompressed sibling ServeDir might pick).
    fn plain_len(&self, req: &Request) -> Option<u64> {
        let known = self.lookup_uri(plain_relative(req.uri().path())?)?;
        (!known.precompressed && !known.meta.is_dir).then_some(known.meta.len)
    }

    /// A cached file by request path (relative, already checked).
    fn lookup_uri(&self, rel: &str) -> Option<Arc<Known>> {
        {
            let by_uri = self.by_uri.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((checked, k)) = by_uri.get(rel) {
                if checked.elapsed() < REVALIDATE_AFTER {
                    return Some(k.clone());
                }
            }
        }
        let known = self.lookup(&self.root.join(rel)).ok()?;
        let mut by_uri = self.by_uri.lock().unwrap_or_else(|e| e.into_inner());
        if by_uri.len() >= CACHE_ENTRIES_MAX {
            by_uri.clear();
        }
        by_uri.insert(rel.into(), (Instant::now(), known.clone()));
        Some(known)
    }

    fn lookup(&self, path: &Path) -> io::Result<Arc<Known>> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = entries.map.get(path) {
            if e.checked.elapsed() < REVALIDATE_AFTER {
                return e.found.clone().map_err(io::Error::from);
            }
        }
        let previous = entries.map.get(path).and_then(|e| e.found.clone().ok());
        let found = self.resolve(path, previous.as_deref());
        if entries.map.len() >= CACHE_ENTRIES_MAX || entries.bytes > CACHE_BYTES_MAX {
            entries.clear();
            // Lock order: entries, then by_uri (lookup_uri never holds both).
            self.by_uri
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        }
        entries.insert(
            path.to_path_buf(),
            Entry {
                checked: Instant::now(),
                found: found.as_ref().map(Arc::clone).map_err(io::Error::kind),
            },
        );
        found
    }

    fn resolve(&self, path: &Path, previous: Option<&Known>) -> io::Result<Arc<Known>> {
        let real = std::fs::canonicalize(path)?;
        if !real.starts_with(&self.root) {
            // ServeDir turns PermissionDenied into 404, like a missing
            // file: no hint that something exists outside.
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "path resolves outside app.static_dir",
            ));
        }
        let m = std::fs::metadata(&real)?;
        let meta = Meta {
            is_dir: m.is_dir(),
            len: m.len(),
            modified: m.modified().ok(),
        };
        let precompressed = !meta.is_dir && has_precompressed(&real);
        // Unchanged since last time: keep the bytes we have.
        if let Some(p) = previous {
            if p.real == real && p.meta.len == meta.len && p.meta.modified == meta.modified {
                return Ok(Arc::new(Known {
                    real,
                    meta: p.meta.clone(),
                    data: p.data.clone(),
                    precompressed,
                    headers: p.headers.clone(),
                }));
            }
        }
        let data = if !meta.is_dir && meta.len <= CACHE_FILE_MAX {
            let mut buf = Vec::with_capacity(meta.len as usize);
            std::fs::File::open(&real)?.read_to_end(&mut buf)?;
            Some(Bytes::from(buf))
        } else {
            None
        };
        let meta = Meta {
            len: data.as_ref().map_or(meta.len, |d| d.len() as u64),
            ..meta
        };
        // The content type comes from the requested name, as in ServeDir.
        let headers = data.as_ref().map(|_| FastHeaders::new(path, &meta));
        Ok(Arc::new(Known {
            real,
            meta,
            data,
            precompressed,
            headers,
        }))
    }
}

/// Whether `file.gz`, `file.br` or `file.zst` exists next to `file`.
fn has_precompressed(real: &Path) -> bool {
    ["gz", "br", "zst"].iter().any(|ext| {
        let mut name = real.as_os_str().to_os_string();
        name.push(".");
        name.push(ext);
        Path::new(&name).is_file()
    })
}

impl Backend for CachedBackend {
    type File = StaticFile;
    type Metadata = Meta;
    type OpenFuture = Ready<io::Result<StaticFile>>;
    type MetadataFuture = Ready<io::Result<Meta>>;

    fn open(&self, path: PathBuf) -> Self::OpenFuture {
        ready(self.inner.lookup(&path).and_then(|k| {
            if k.meta.is_dir {
                return Err(io::Error::other("is a directory"));
            }
            Ok(match &k.data {
                Some(data) => StaticFile::Memory {
                    data: data.clone(),
                    pos: 0,
                    meta: k.meta.clone(),
                },
                None => StaticFile::Disk {
                    file: std::fs::File::open(&k.real)?,
                    meta: k.meta.clone(),
                },
            })
        }))
    }

    fn metadata(&self, path: PathBuf) -> Self::MetadataFuture {
        ready(self.inner.lookup(&path).map(|k| k.meta.clone()))
    }
}

/// A file being served: from memory, or read from disk as it is sent.
pub enum StaticFile {
    Memory { data: Bytes, pos: u64, meta: Meta },
    Disk { file: std::fs::File, meta: Meta },
}

impl AsyncRead for StaticFile {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            StaticFile::Memory { data, pos, .. } => {
                let start = (*pos as usize).min(data.len());
                let n = (data.len() - start).min(buf.remaining());
                buf.put_slice(&data[start..start + n]);
                *pos += n as u64;
                Poll::Ready(Ok(()))
            }
            StaticFile::Disk { file, .. } => {
                let n = file.read(buf.initialize_unfilled())?;
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl AsyncSeek for StaticFile {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        match self.get_mut() {
            StaticFile::Memory { data, pos, .. } => {
                let len = data.len() as i64;
                let new = match position {
                    SeekFrom::Start(p) => p as i64,
                    SeekFrom::End(d) => len + d,
                    SeekFrom::Current(d) => *pos as i64 + d,
                };
                if new < 0 {
                    return Err(io::Error::new(io::ErrorKind::InvalidInput, "negative seek"));
                }
                *pos = new as u64;
                Ok(())
            }
            StaticFile::Disk { file, .. } => file.seek(position).map(|_| ()),
        }
    }

    fn poll_complete(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Poll::Ready(match self.get_mut() {
            StaticFile::Memory { pos, .. } => Ok(*pos),
            StaticFile::Disk { file, .. } => file.stream_position(),
        })
    }
}

impl File for StaticFile {
    type Metadata = Meta;
    type MetadataFuture<'a> = Ready<io::Result<Meta>>;

    fn metadata(&self) -> Self::MetadataFuture<'_> {
        ready(Ok(match self {
            StaticFile::Memory { meta, .. } | StaticFile::Disk { meta, .. } => meta.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(bytes: Option<usize>) -> Entry {
        let meta = Meta {
            is_dir: false,
            len: bytes.unwrap_or(0) as u64,
            modified: None,
        };
        Entry {
            checked: Instant::now(),
            found: Ok(Arc::new(Known {
                real: PathBuf::from("/x"),
                meta,
                precompressed: false,
                data: bytes.map(|n| Bytes::from(vec![0u8; n])),
                headers: None,
            })),
        }
    }

    #[test]
    fn byte_total_follows_inserts_replacements_and_clears() {
        let mut e = Entries::default();
        e.insert("/a".into(), entry(Some(100)));
        e.insert("/b".into(), entry(Some(50)));
        e.insert("/c".into(), entry(None));
        assert_eq!(e.bytes, 150);
        e.insert("/a".into(), entry(Some(10)));
        assert_eq!(e.bytes, 60);
        e.insert(
            "/b".into(),
            Entry {
                checked: Instant::now(),
                found: Err(io::ErrorKind::NotFound),
            },
        );
        assert_eq!(e.bytes, 10);
        e.clear();
        assert_eq!((e.bytes, e.map.len()), (0, 0));
    }
}
