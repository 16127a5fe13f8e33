//! Request handles: what `propose`, `read_index`, membership and snapshot
//! requests return. A handle is a [`Future`] and can also be waited on with
//! [`RequestHandle::wait`]; the engine completes it exactly once through its
//! [`Completer`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};

struct SlotState<T> {
    outcome: Option<Result<T>>,
    taken: bool,
    waker: Option<Waker>,
}

struct Slot<T> {
    state: Mutex<SlotState<T>>,
    cv: Condvar,
}

/// The caller's side of a request.
pub struct RequestHandle<T> {
    slot: Arc<Slot<T>>,
}

/// The engine's side of a request: completes it once.
pub(crate) struct Completer<T> {
    slot: Arc<Slot<T>>,
    /// When the request was made and the histogram its latency goes to
    /// (successes only).
    timer: Option<(std::time::Instant, Arc<crate::latency::Latency>)>,
}

/// A connected handle and completer.
pub(crate) fn request<T>() -> (RequestHandle<T>, Completer<T>) {
    let slot = Arc::new(Slot {
        state: Mutex::new(SlotState {
            outcome: None,
            taken: false,
            waker: None,
        }),
        cv: Condvar::new(),
    });
    (
        RequestHandle { slot: slot.clone() },
        Completer { slot, timer: None },
    )
}

/// [`request`] whose successful completion records its latency in `latency`.
pub(crate) fn timed_request<T>(
    latency: &Arc<crate::latency::Latency>,
) -> (RequestHandle<T>, Completer<T>) {
    let (handle, mut completer) = request();
    completer.timer = Some((std::time::Instant::now(), latency.clone()));
    (handle, completer)
}

impl<T> Completer<T> {
    /// Completes the request; later calls are ignored.
    pub(crate) fn complete(&self, outcome: Result<T>) {
        let waker = {
            let mut s = self.slot.state.lock();
            if s.outcome.is_some() || s.taken {
                return;
            }
            if let (Ok(_), Some((started, latency))) = (&outcome, &self.timer) {
                latency.record(started.elapsed());
            }
            s.outcome = Some(outcome);
            s.waker.take()
        };
        self.slot.cv.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> Drop for Completer<T> {
    /// A request the engine lets go of without an outcome (its replica was
    /// unloaded while the request sat in a queue) ends as `ShardClosed`, so
    /// that `wait` never blocks forever.
    fn drop(&mut self) {
        self.complete(Err(Error::ShardClosed));
    }
}

impl<T> RequestHandle<T> {
    /// Blocks until the request completes. The engine enforces the request's
    /// timeout, so this always returns.
    pub fn wait(self) -> Result<T> {
        let mut s = self.slot.state.lock();
        loop {
            if let Some(outcome) = s.outcome.take() {
                s.taken = true;
                return outcome;
            }
            // Already taken by `try_result`: nothing more will come.
            if s.taken {
                return Err(Error::Cancelled);
            }
            self.slot.cv.wait(&mut s);
        }
    }

    /// The outcome if the request already completed.
    pub fn try_result(&self) -> Option<Result<T>> {
        let mut s = self.slot.state.lock();
        let out = s.outcome.take();
        if out.is_some() {
            s.taken = true;
        }
        out
    }
}

impl<T> Future for RequestHandle<T> {
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut s = self.slot.state.lock();
        if let Some(outcome) = s.outcome.take() {
            s.taken = true;
            return Poll::Ready(outcome);
        }
        if s.taken {
            return Poll::Ready(Err(Error::Cancelled));
        }
        s.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_returns_the_first_completion_only() {
        let (h, c) = request::<u64>();
        assert!(h.try_result().is_none());
        c.complete(Ok(5));
        c.complete(Ok(6));
        assert_eq!(h.wait().unwrap(), 5);
    }

    #[test]
    fn completion_from_another_thread_wakes_the_waiter() {
        let (h, c) = request::<u64>();
        let t = std::thread::spawn(move || c.complete(Err(Error::Timeout)));
        assert!(matches!(h.wait(), Err(Error::Timeout)));
        t.join().unwrap();
    }

    #[test]
    fn future_is_ready_after_completion() {
        let (mut h, c) = request::<u64>();
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(Pin::new(&mut h).poll(&mut cx).is_pending());
        c.complete(Ok(1));
        assert!(matches!(Pin::new(&mut h).poll(&mut cx), Poll::Ready(Ok(1))));
    }

    #[test]
    fn wait_after_the_outcome_was_taken_returns() {
        let (h, c) = request::<u64>();
        c.complete(Ok(1));
        assert!(matches!(h.try_result(), Some(Ok(1))));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(h.wait().is_err()).unwrap());
        let waited = rx.recv_timeout(std::time::Duration::from_secs(5));
        assert_eq!(waited, Ok(true), "wait blocked forever");
        drop(c);
    }

    #[test]
    fn dropped_completer_ends_the_request() {
        let (h, c) = request::<u64>();
        drop(c);
        assert!(matches!(h.wait(), Err(Error::ShardClosed)));
    }
}
