//! The executor hyper runs HTTP/2 streams on. Each stream's task carries a
//! [`SendWatch`] that its response body keeps up to date (found through a
//! thread-local while the stream is polled); a stream whose response has
//! waited `http.send_timeout` for the client (a flow-control window that
//! never opens, a client that stopped reading) is dropped, which makes h2
//! reset it (`RST_STREAM`) and frees what it held. Streams that are
//! answered promptly never arm a timer.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use super::clock::CLOCK_TICK;
use super::conn_info::SendWatch;
use crate::shm::scoreboard::Slot;

thread_local! {
    /// The watch of the HTTP/2 stream being polled on this thread, if any.
    static CURRENT_STREAM: RefCell<Option<Arc<SendWatch>>> = const { RefCell::new(None) };
}

/// The watch of the HTTP/2 stream this code runs in (`None` in HTTP/1.1).
pub fn current_stream() -> Option<Arc<SendWatch>> {
    CURRENT_STREAM.with(|c| c.borrow().clone())
}

#[derive(Clone)]
pub struct StreamExec {
    pub send_timeout: Duration,
    /// The worker clock (milliseconds), as the watches are stamped with it.
    pub clock: Arc<AtomicU64>,
    pub slot: &'static Slot,
}

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(Watched {
            // Boxed: the stream's future holds the request's (and the
            // app's), and tokio moves a task's whole stage each time it
            // changes (spawned, running, finished); a pointer is cheaper
            // to move than the future.
            fut: Box::pin(fut),
            watch: Arc::new(SendWatch::default()),
            exec: self.clone(),
            sleep: None,
        });
    }
}

pin_project_lite::pin_project! {
    struct Watched<F> {
        #[pin]
        fut: F,
        watch: Arc<SendWatch>,
        exec: StreamExec,
        sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    }
}

impl<F: Future> Future for Watched<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let prev = CURRENT_STREAM.with(|c| c.replace(Some(this.watch.clone())));
        let polled = this.fut.poll(cx);
        CURRENT_STREAM.with(|c| *c.borrow_mut() = prev);
        if polled.is_ready() {
            return Poll::Ready(());
        }
        let Some(since) = this.watch.since() else {
            return Poll::Pending;
        };
        let limit = this.exec.send_timeout.as_millis() as u64;
        loop {
            let now = this.exec.clock.load(Relaxed);
            let deadline = since + limit;
            if now >= deadline {
                // Dropping the stream's future resets the stream.
                this.exec.slot.count_send_timeout();
                this.watch.time_out();
                return Poll::Ready(());
            }
            // The clock advances in ticks: never sleep less than one.
            let wait = Duration::from_millis(deadline - now).max(CLOCK_TICK);
            let at = tokio::time::Instant::now() + wait;
            let sleep = match this.sleep {
                Some(s) => {
                    s.as_mut().reset(at);
                    s
                }
                None => this.sleep.insert(Box::pin(tokio::time::sleep_until(at))),
            };
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}
