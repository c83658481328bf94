//! A sleep precise to microseconds, for pacing.
//!
//! tokio's timer wheel has millisecond granularity and rounds deadlines up: at 5000 req/s
//! (200 µs apart) every send would be up to a millisecond late, and since latency is
//! measured from the intended send time, that lateness would swamp the tens of
//! microseconds a proxy adds. A timerfd is an hrtimer armed without slack, and the
//! runtime's epoll wakes the pacer when it fires.
//!
//! Registering a file descriptor with tokio is `unsafe` (tokio cannot check that the
//! descriptor outlives its registration); this is the crate's only unsafe code.

#![allow(unsafe_code)]

use std::time::{Duration, Instant};
use timerfd::{ClockId, SetTimeFlags, TimerFd, TimerState};
use tokio::io::unix::AsyncFd;

/// One timer, reused for every wake-up of a pacer.
pub struct PreciseTimer {
    fd: AsyncFd<TimerFd>,
}

impl PreciseTimer {
    /// Needs a tokio runtime with I/O enabled.
    pub fn new() -> std::io::Result<Self> {
        let timer = TimerFd::new_custom(ClockId::Monotonic, true, true)?;
        // SAFETY: the TimerFd owns its descriptor and is owned by the AsyncFd, which
        // deregisters it on drop before the TimerFd closes it; nothing else can close or
        // replace the descriptor meanwhile.
        let fd = unsafe { AsyncFd::register(timer) }.map_err(|e| e.into_parts().1)?;
        Ok(Self { fd })
    }

    /// Returns at `deadline` (or at once if it has passed), a few microseconds late at
    /// most on an idle machine; the caller measures how late it really was.
    pub async fn sleep_until(&mut self, deadline: Instant) -> std::io::Result<()> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        // A zero duration would disarm the timer instead of firing it.
        if remaining < Duration::from_micros(1) {
            return Ok(());
        }
        // Relative to now: std's Instant is CLOCK_MONOTONIC but does not expose its
        // timespec, and the nanoseconds between reading it and arming are negligible.
        self.fd.get_mut().set_state(TimerState::Oneshot(remaining), SetTimeFlags::Default);
        loop {
            let mut ready = self.fd.readable_mut().await?;
            // A non-blocking read returns 0 when the timer has not fired: a stale readiness.
            if ready.get_inner().read() > 0 {
                return Ok(());
            }
            ready.clear_ready();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wakes_up_at_the_deadline_not_before() {
        let mut timer = PreciseTimer::new().expect("timerfd");
        for micros in [0, 50, 300, 1500] {
            let deadline = Instant::now() + Duration::from_micros(micros);
            timer.sleep_until(deadline).await.expect("sleep");
            assert!(Instant::now() >= deadline, "woke up before the deadline of {micros} µs");
        }
        // A deadline in the past returns at once.
        timer.sleep_until(Instant::now() - Duration::from_millis(5)).await.expect("sleep");
    }
}
