//! Concurrency limits (bulkheads): at most `max_in_flight` requests of one backend at a
//! time, at most `max_queued` more waiting for a place; past both the proxy answers at
//! once (503, gRPC `RESOURCE_EXHAUSTED`) rather than queue without bound, so that a slow
//! service cannot hold every connection and every request of its callers.
//!
//! A place is held from the pick to the response head: what a slow backend holds up is
//! the caller's wait for an answer. Not to the body's end: a body streams under the
//! caller's own flow control, so a place held to its end would belong to whoever reads
//! slowly (the caller's app, not the backend), and every long stream (a download, a gRPC
//! server stream) would hold one for its whole life, shedding short calls behind it.
//! Unit-tested in `resilience::tests` against a peer whose body comes late.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitConfig {
    pub max_in_flight: u32,
    pub max_queued: u32,
}

#[derive(Debug)]
pub struct Limit {
    pub config: LimitConfig,
    places: Arc<Semaphore>,
    queued: AtomicU32,
}

/// Both the places and the queue are full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Full;

/// Leaves the queue when the wait ends, however it ends (a caller that gives up too).
struct Queued<'a>(&'a AtomicU32);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Limit {
    pub fn new(config: LimitConfig) -> Self {
        Self {
            config,
            places: Arc::new(Semaphore::new(config.max_in_flight as usize)),
            queued: AtomicU32::new(0),
        }
    }

    /// A place for one request, waiting in the queue if there is room in it.
    pub async fn acquire(&self) -> Result<OwnedSemaphorePermit, Full> {
        if let Ok(permit) = self.places.clone().try_acquire_owned() {
            return Ok(permit);
        }
        if self.queued.fetch_add(1, Ordering::Relaxed) >= self.config.max_queued {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(Full);
        }
        let _queued = Queued(&self.queued);
        self.places.clone().acquire_owned().await.map_err(|_| Full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn past_the_places_and_the_queue_requests_are_refused_at_once() {
        let limit = Arc::new(Limit::new(LimitConfig { max_in_flight: 2, max_queued: 1 }));
        let a = limit.acquire().await.unwrap();
        let _b = limit.acquire().await.unwrap();
        let waiting = tokio::spawn({
            let limit = limit.clone();
            async move { limit.acquire().await.map(drop) }
        });
        tokio::task::yield_now().await;
        assert_eq!(limit.acquire().await.unwrap_err(), Full, "two in flight, one queued: full");
        drop(a);
        assert!(waiting.await.unwrap().is_ok(), "the queued request gets the freed place");
        assert_eq!(limit.queued.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_leaves_the_queue() {
        let limit = Limit::new(LimitConfig { max_in_flight: 1, max_queued: 1 });
        let _a = limit.acquire().await.unwrap();
        let gave_up = tokio::time::timeout(std::time::Duration::from_millis(10), limit.acquire()).await;
        assert!(gave_up.is_err());
        assert_eq!(limit.queued.load(Ordering::Relaxed), 0, "its place in the queue is free again");
    }
}
