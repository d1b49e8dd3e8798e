//! A request body read whole before it is forwarded: in memory up to
//! `app.body_buffer`, beyond that in an unnamed temporary file in the run
//! directory (`O_TMPFILE`: nothing is left behind, even by a crash), so
//! that many large uploads at once cost disk, not the front's memory.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;

/// Bytes read from the temporary file per frame sent to the app.
const CHUNK: usize = 64 * 1024;

/// Why a body could not be kept.
#[derive(Debug)]
pub enum SpoolError<E> {
    /// The client's body failed (too large, stalled, cut): answered as the
    /// server answers it.
    Body(E),
    /// The temporary file could not be made or written.
    File(io::Error),
}

/// A body read whole.
pub enum Spooled {
    Memory(Bytes),
    File { file: File, len: u64 },
}

/// Reads `body` to its end, keeping at most `buffer` bytes in memory.
pub async fn read<B>(
    mut body: B,
    buffer: usize,
    dir: &Path,
) -> Result<Spooled, SpoolError<B::Error>>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    let mut mem = BytesMut::new();
    let mut file: Option<(File, u64)> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(SpoolError::Body)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        match &mut file {
            Some((f, len)) => {
                // Small writes to a page-cache file: not worth a thread.
                f.write_all(&data).map_err(SpoolError::File)?;
                *len += data.len() as u64;
            }
            None if mem.len() + data.len() > buffer => {
                let mut f = temp_file(dir).map_err(SpoolError::File)?;
                f.write_all(&mem).map_err(SpoolError::File)?;
                f.write_all(&data).map_err(SpoolError::File)?;
                file = Some((f, (mem.len() + data.len()) as u64));
                mem = BytesMut::new();
            }
            None => mem.extend_from_slice(&data),
        }
    }
    Ok(match file {
        Some((file, len)) => Spooled::File { file, len },
        None => Spooled::Memory(mem.freeze()),
    })
}

/// An unnamed file in `dir`, readable and writable by this process only.
/// Where the file system has no `O_TMPFILE` (older overlayfs), a named
/// file is made and unlinked at once.
fn temp_file(dir: &Path) -> io::Result<File> {
    let mut open = std::fs::OpenOptions::new();
    open.read(true).write(true).mode(0o600);
    match open
        .clone()
        .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
        .open(dir)
    {
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
            ) =>
        {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!("body-{}-{n}.tmp", std::process::id()));
            let f = open
                .create_new(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(&path)?;
            std::fs::remove_file(&path)?;
            Ok(f)
        }
        other => other,
    }
}

impl Spooled {
    /// The body to send to the app (again, for a retry: from the start).
    pub fn to_body(&self) -> io::Result<Outgoing> {
        match self {
            Spooled::Memory(b) => Ok(Outgoing::Memory(Some(b.clone()))),
            Spooled::File { file, len } => {
                let mut file = file.try_clone()?;
                file.seek(SeekFrom::Start(0))?;
                Ok(Outgoing::File { file, left: *len })
            }
        }
    }
}

/// A spooled body on its way to the app, with its exact length (so the
/// app gets a `Content-Length`, not chunks).
#[derive(Debug)]
pub enum Outgoing {
    Memory(Option<Bytes>),
    File { file: File, left: u64 },
}

impl HttpBody for Outgoing {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            Outgoing::Memory(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Outgoing::File { left: 0, .. } => Poll::Ready(None),
            Outgoing::File { file, left } => {
                // A read of the page cache (just written): short enough to
                // do on the worker's thread.
                let mut buf = vec![0u8; CHUNK.min(*left as usize)];
                match file.read(&mut buf) {
                    Ok(0) => Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the spooled body is shorter than written",
                    )))),
                    Ok(n) => {
                        buf.truncate(n);
                        *left -= n as u64;
                        Poll::Ready(Some(Ok(Frame::data(Bytes::from(buf)))))
                    }
                    Err(e) => Poll::Ready(Some(Err(e))),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Outgoing::Memory(b) => b.as_ref().is_none_or(|b| b.is_empty()),
            Outgoing::File { left, .. } => *left == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(match self {
            Outgoing::Memory(b) => b.as_ref().map_or(0, |b| b.len() as u64),
            Outgoing::File { left, .. } => *left,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(s: &Spooled) -> Vec<u8> {
        let body = s.to_body().unwrap();
        assert_eq!(
            body.size_hint().exact(),
            Some(match s {
                Spooled::Memory(b) => b.len() as u64,
                Spooled::File { len, .. } => *len,
            })
        );
        body.collect().await.unwrap().to_bytes().to_vec()
    }

    #[test]
    fn a_body_over_the_buffer_goes_to_a_file_and_comes_back_whole_twice() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
            let chunks: Vec<Result<Frame<Bytes>, io::Error>> = data
                .chunks(7_000)
                .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
                .collect();
            let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
            let s = read(body, 64 * 1024, dir.path()).await.unwrap();
            assert!(matches!(s, Spooled::File { len: 300_000, .. }));
            assert_eq!(collect(&s).await, data);
            // A retry sends it again from the start.
            assert_eq!(collect(&s).await, data);
            // Unnamed: nothing in the directory.
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

            let small = http_body_util::Full::new(Bytes::from_static(b"hello"));
            let s = read(small, 64 * 1024, dir.path()).await.unwrap();
            assert!(matches!(s, Spooled::Memory(_)));
            assert_eq!(collect(&s).await, b"hello");
        });
    }
}
