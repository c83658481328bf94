//! The HTTP connections a proxy serves, kept so that they can be closed from outside:
//! connections with no request open for `limits.http_idle_timeout` (idle keep-alive
//! connections, HTTP/2 connections with no stream, and clients too slow to finish a
//! request head), and every connection, gracefully, on drain.
//!
//! One sweep task per proxy looks at every connection a few times per idle period,
//! instead of a timer per request or per connection: timers armed on the request path
//! cost more than the rest of the bookkeeping together. A connection learns that it must
//! close from one atomic flag and a waker, which it checks whenever it wakes anyway.

use futures_util::task::AtomicWaker;
use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How many sweeps an idle period spans: a quiet connection is closed between one and
/// `1 + 1/SWEEPS_PER_PERIOD` idle periods after its last request.
const SWEEPS_PER_PERIOD: u32 = 4;

/// Why a connection must close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    /// No request open for the idle timeout: drop it, nothing is lost.
    Idle,
    /// The proxy is draining: finish what is in flight, then close.
    Drain,
}

/// The `seen` of a connection no sweep has looked at yet: no count of begun requests
/// equals it, so the first sweep only takes note, and a new connection too gets a whole
/// period before it counts as idle.
const NEVER_SWEPT: u64 = u64::MAX;

const OPEN: u8 = 0;
const CLOSE_IDLE: u8 = 1;
const CLOSE_DRAIN: u8 = 2;

#[derive(Debug)]
pub struct HttpConnections {
    idle_timeout: Duration,
    registry: Mutex<Registry>,
}

#[derive(Debug, Default)]
struct Registry {
    next_id: u64,
    draining: bool,
    live: HashMap<u64, Swept>,
}

/// A connection as the sweep sees it: its state, and what the last sweeps found.
#[derive(Debug)]
struct Swept {
    state: Arc<ConnState>,
    /// `begun` at the last sweep.
    seen: u64,
    /// Sweeps in a row that found no request open and none begun.
    quiet: u32,
}

/// One connection's requests and whether it must close.
#[derive(Debug, Default)]
pub struct ConnState {
    begun: AtomicU64,
    open: AtomicU64,
    close: AtomicU8,
    waker: AtomicWaker,
}

impl HttpConnections {
    pub fn new(idle_timeout: Duration) -> Self {
        Self { idle_timeout, registry: Mutex::default() }
    }

    /// Registers a connection until the returned handle is dropped.
    pub fn register(self: &Arc<Self>) -> Registered {
        let state = Arc::new(ConnState::default());
        let mut registry = self.lock();
        if registry.draining {
            state.close.store(CLOSE_DRAIN, Ordering::Release);
        }
        let id = registry.next_id;
        registry.next_id += 1;
        registry.live.insert(id, Swept { state: state.clone(), seen: NEVER_SWEPT, quiet: 0 });
        Registered { id, state, connections: self.clone() }
    }

    /// Sweeps for idle connections until `drain`, then asks every connection to drain.
    pub async fn run(self: Arc<Self>, drain: CancellationToken) {
        let period = self.idle_timeout / SWEEPS_PER_PERIOD;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(period) => self.sweep(),
                _ = drain.cancelled() => break,
            }
        }
        let mut registry = self.lock();
        registry.draining = true;
        for swept in registry.live.values() {
            swept.state.signal(CLOSE_DRAIN);
        }
    }

    fn sweep(&self) {
        let mut registry = self.lock();
        for swept in registry.live.values_mut() {
            let state = &swept.state;
            if state.close.load(Ordering::Acquire) != OPEN {
                continue;
            }
            let begun = state.begun.load(Ordering::Relaxed);
            if begun != swept.seen || state.open.load(Ordering::Relaxed) > 0 {
                swept.seen = begun;
                swept.quiet = 0;
                continue;
            }
            swept.quiet += 1;
            if swept.quiet == SWEEPS_PER_PERIOD {
                tracing::debug!(idle = ?self.idle_timeout, "closing an HTTP/1 connection with no request open");
                state.signal(CLOSE_IDLE);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(test)]
    fn live(&self) -> usize {
        self.lock().live.len()
    }
}

impl ConnState {
    fn signal(&self, close: u8) {
        // Drain wins over idle; an idle close already signalled stays.
        if self.close.fetch_max(close, Ordering::AcqRel) < close {
            self.waker.wake();
        }
    }

    /// Completes when the connection must close.
    pub async fn closing(&self) -> Close {
        poll_fn(|cx| {
            let read = |close: &AtomicU8| match close.load(Ordering::Acquire) {
                OPEN => None,
                CLOSE_IDLE => Some(Close::Idle),
                _ => Some(Close::Drain),
            };
            if let Some(close) = read(&self.close) {
                return Poll::Ready(close);
            }
            self.waker.register(cx.waker());
            // A signal between the first look and the registration woke nobody.
            read(&self.close).map_or(Poll::Pending, Poll::Ready)
        })
        .await
    }

    /// Counts a request as begun and open until the returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> OpenRequest {
        self.begun.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenRequest(self.clone())
    }
}

/// A request whose response has not yet been written to its end (or abandoned).
#[derive(Debug)]
pub struct OpenRequest(Arc<ConnState>);

impl Drop for OpenRequest {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A registered connection; dropping it unregisters.
#[derive(Debug)]
pub struct Registered {
    id: u64,
    pub state: Arc<ConnState>,
    connections: Arc<HttpConnections>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.connections.lock().live.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;

    fn poll_closing(state: &ConnState) -> Option<Close> {
        let fut = std::pin::pin!(state.closing());
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match fut.poll(&mut cx) {
            Poll::Ready(c) => Some(c),
            Poll::Pending => None,
        }
    }

    #[test]
    fn only_connections_quiet_for_a_whole_period_close_and_drain_reaches_all() {
        let connections = Arc::new(HttpConnections::new(Duration::from_secs(4)));
        let idle = connections.register();
        let busy = connections.register();
        let chatty = connections.register();
        let open = busy.state.begin();
        // The first sweep takes note of each connection; the next ones count quiet periods.
        for sweep in 0..=SWEEPS_PER_PERIOD {
            drop(chatty.state.begin());
            connections.sweep();
            let expected = (sweep == SWEEPS_PER_PERIOD).then_some(Close::Idle);
            assert_eq!(poll_closing(&idle.state), expected, "after sweep {sweep}");
        }
        assert_eq!(poll_closing(&busy.state), None, "a request is open");
        assert_eq!(poll_closing(&chatty.state), None, "requests keep coming");
        // Once its request is done, the busy connection goes quiet like any other.
        drop(open);
        for _ in 0..SWEEPS_PER_PERIOD + 1 {
            connections.sweep();
        }
        assert_eq!(poll_closing(&busy.state), Some(Close::Idle));

        // Drain reaches every connection, even one registered after it began.
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let drain = CancellationToken::new();
        drain.cancel();
        rt.block_on(connections.clone().run(drain));
        assert_eq!(poll_closing(&chatty.state), Some(Close::Drain));
        assert_eq!(poll_closing(&idle.state), Some(Close::Drain), "drain wins over idle");
        assert_eq!(poll_closing(&connections.register().state), Some(Close::Drain));

        drop((idle, busy, chatty));
        assert_eq!(connections.live(), 0, "dropped connections unregister");
    }
}
