//! A response read from its app process ahead of a client that reads
//! slower (`app.response_buffer`), as nginx's `proxy_buffering` does: the
//! process is free as soon as it has written its answer, so a slow reader
//! of a large response does not hold a gunicorn sync worker (or an
//! `app.max_concurrency` place) for the whole download. Bytes still go to
//! the client as soon as they arrive: server-sent events stream as before.
//!
//! A task of the front worker's runtime reads the app's body into a queue
//! holding at most `app.response_buffer` bytes; the client's side takes
//! from it. What the app process is counted by (its permit) is let go when
//! the app's body has ended, not when the client has read it all. When
//! the client goes away, the task stops and drops the app's body, which
//! closes that connection to the process as before.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::{mpsc, Semaphore};

/// A response of known length up to this fits the app process's socket
/// buffer (about 200 KiB by default on Linux): the process is free without
/// a task of its own.
pub const SMALL_RESPONSE: u64 = 64 * 1024;

/// Whether `body` is worth reading ahead with at most `limit` bytes.
pub fn wanted<B: HttpBody>(body: &B, limit: usize) -> bool {
    limit > 0
        && !body.is_end_stream()
        && body.size_hint().exact().is_none_or(|n| n > SMALL_RESPONSE)
}

/// Starts reading `body` ahead, holding `held` until it has ended.
pub fn spawn<B, T>(body: B, held: T, limit: usize) -> ReadAhead<B::Error>
where
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Send + 'static,
    T: Send + 'static,
{
    // acquire_many takes a u32: a larger limit holds 4 GiB at most. A
    // frame takes at least one byte of room, so no limit is below one.
    let limit = limit.clamp(1, u32::MAX as usize);
    // Bounded by the room each frame takes, not by a count of frames: the
    // app's frames are as small as its writes.
    let (tx, rx) = mpsc::unbounded_channel();
    let room = Arc::new(Semaphore::new(limit));
    let hint = body.size_hint();
    tokio::spawn(pump(body, held, tx, room.clone(), limit));
    ReadAhead { rx, room, hint }
}

/// A frame of the app's body and the room it took in the queue: given
/// back when the client's side takes it.
type Queued<E> = (Result<Frame<Bytes>, E>, usize);

/// The room a frame takes in the queue: its bytes (at least one, so that
/// empty frames are bounded too), and all of it for a larger one.
fn room_of(frame: &Frame<Bytes>, limit: usize) -> usize {
    frame.data_ref().map_or(1, Bytes::len).clamp(1, limit)
}

async fn pump<B, T>(
    mut body: B,
    held: T,
    tx: mpsc::UnboundedSender<Queued<B::Error>>,
    room: Arc<Semaphore>,
    limit: usize,
) where
    B: HttpBody<Data = Bytes> + Unpin,
{
    loop {
        let next = tokio::select! {
            next = body.frame() => next,
            // The client is gone: so is the app's body, with its connection.
            () = tx.closed() => return,
        };
        let Some(next) = next else { break };
        let n = next.as_ref().map_or(0, |frame| room_of(frame, limit));
        if n > 0 {
            let taken = tokio::select! {
                taken = room.acquire_many(n as u32) => taken,
                () = tx.closed() => return,
            };
            match taken {
                // Given back by the client's side as it takes the frame.
                Ok(permits) => permits.forget(),
                // The semaphore is never closed.
                Err(_) => return,
            }
        }
        let failed = next.is_err();
        if tx.send((next, n)).is_err() || failed {
            return;
        }
    }
    // The app's body has ended: its process is free.
    drop(held);
}

/// The client's side of a response read ahead.
pub struct ReadAhead<E> {
    rx: mpsc::UnboundedReceiver<Queued<E>>,
    room: Arc<Semaphore>,
    /// The app's body's size, less what the client's side has taken.
    hint: SizeHint,
}

impl<E> HttpBody for ReadAhead<E> {
    type Data = Bytes;
    type Error = E;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, E>>> {
        let Some((next, room)) = ready!(self.rx.poll_recv(cx)) else {
            return Poll::Ready(None);
        };
        self.room.add_permits(room);
        if let (Ok(frame), Some(left)) = (&next, self.hint.exact()) {
            let taken = frame.data_ref().map_or(0, |d| d.len() as u64);
            self.hint.set_exact(left.saturating_sub(taken));
        }
        Poll::Ready(Some(next))
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
    use std::time::Duration;

    /// An app's body of `frames` frames of `size` bytes (byte i of frame k
    /// is k), counting the frames it gave and saying when it is dropped.
    struct Source {
        frames: usize,
        size: usize,
        given: Arc<AtomicUsize>,
        dropped: Arc<AtomicBool>,
    }

    impl HttpBody for Source {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            let k = self.given.load(SeqCst);
            if k == self.frames {
                return Poll::Ready(None);
            }
            self.given.store(k + 1, SeqCst);
            Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![k as u8; self.size])))))
        }
    }

    impl Drop for Source {
        fn drop(&mut self) {
            self.dropped.store(true, SeqCst);
        }
    }

    /// Says when it is dropped (the app process's permit).
    struct Held(Arc<AtomicBool>);

    impl Drop for Held {
        fn drop(&mut self) {
            self.0.store(true, SeqCst);
        }
    }

    struct Case {
        given: Arc<AtomicUsize>,
        source_dropped: Arc<AtomicBool>,
        released: Arc<AtomicBool>,
        body: ReadAhead<std::convert::Infallible>,
    }

    fn start(frames: usize, size: usize, limit: usize) -> Case {
        let given = Arc::new(AtomicUsize::new(0));
        let source_dropped = Arc::new(AtomicBool::new(false));
        let released = Arc::new(AtomicBool::new(false));
        let source = Source {
            frames,
            size,
            given: given.clone(),
            dropped: source_dropped.clone(),
        };
        let body = spawn(source, Held(released.clone()), limit);
        Case {
            given,
            source_dropped,
            released,
            body,
        }
    }

    /// Lets the pump run until it waits.
    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    #[test]
    fn the_app_is_free_once_its_body_is_read_though_the_client_has_read_nothing() {
        runtime().block_on(async {
            let case = start(5, 10, 100);
            settle().await;
            assert_eq!(case.given.load(SeqCst), 5);
            assert!(case.released.load(SeqCst), "the permit is let go");
            let got = case.body.collect().await.unwrap().to_bytes();
            let want: Vec<u8> = (0..5u8).flat_map(|k| [k; 10]).collect();
            assert_eq!(got, want, "every byte, in order");
        });
    }

    /// The app's writes can be small: what is bounded is bytes, not frames.
    #[test]
    fn many_small_frames_are_read_ahead_up_to_the_limit_in_bytes() {
        runtime().block_on(async {
            let case = start(5000, 10, 1 << 20);
            settle().await;
            assert_eq!(case.given.load(SeqCst), 5000);
            assert!(case.released.load(SeqCst));
            assert_eq!(case.body.collect().await.unwrap().to_bytes().len(), 50_000);
        });
    }

    #[test]
    fn no_more_than_the_limit_is_read_ahead_of_the_client() {
        runtime().block_on(async {
            let mut case = start(5, 10, 25);
            settle().await;
            // Two frames queued (20 bytes); the third was read from the app
            // and waits for room.
            assert_eq!(case.given.load(SeqCst), 3);
            assert!(!case.released.load(SeqCst));
            let first = case.body.frame().await.unwrap().unwrap();
            assert_eq!(first.into_data().unwrap(), Bytes::from(vec![0u8; 10]));
            settle().await;
            assert_eq!(case.given.load(SeqCst), 4, "room for one more");
            let rest = case.body.collect().await.unwrap().to_bytes();
            assert_eq!(rest.len(), 40);
            assert!(case.released.load(SeqCst));
        });
    }

    #[test]
    fn a_frame_larger_than_the_limit_goes_through_alone() {
        runtime().block_on(async {
            let case = start(3, 100, 30);
            let got = case.body.collect().await.unwrap().to_bytes();
            assert_eq!(got.len(), 300);
            assert!(case.released.load(SeqCst));
        });
    }

    #[test]
    fn a_client_gone_stops_the_reading_and_drops_the_apps_body() {
        runtime().block_on(async {
            let case = start(1000, 10, 25);
            settle().await;
            drop(case.body);
            tokio::time::timeout(Duration::from_secs(10), async {
                while !case.source_dropped.load(SeqCst) {
                    tokio::task::yield_now().await;
                }
            })
            .await
            .expect("the app's body is dropped");
            assert!(case.released.load(SeqCst));
            assert!(case.given.load(SeqCst) < 1000);
        });
    }

    #[test]
    fn the_size_hint_counts_down_to_what_is_left() {
        runtime().block_on(async {
            let mut case = start(2, 10, 100);
            case.body.hint = SizeHint::with_exact(20);
            case.body.frame().await.unwrap().unwrap();
            assert_eq!(case.body.size_hint().exact(), Some(10));
        });
    }

    #[test]
    fn small_known_responses_and_a_zero_limit_are_not_read_ahead() {
        let sized = |n: u64| http_body_util::Full::new(Bytes::from(vec![0; n as usize]));
        assert!(!wanted(&sized(SMALL_RESPONSE), 1 << 20));
        assert!(wanted(&sized(SMALL_RESPONSE + 1), 1 << 20));
        assert!(!wanted(&sized(SMALL_RESPONSE + 1), 0));
        let unknown = http_body_util::StreamBody::new(futures_util::stream::empty::<
            Result<Frame<Bytes>, std::convert::Infallible>,
        >());
        assert!(wanted(&unknown, 1 << 20), "a stream of unknown length");
    }
}
