//! The retry budget: retries may add at most `ratio` to the requests a proxy sends to a
//! service, plus `min_per_second`, over a sliding window.
//!
//! This is what makes a retry storm impossible by construction. However many attempts a
//! route allows, a failing service sees at most `(1 + ratio)` times its offered load (plus
//! the small floor that lets a quiet service retry at all), never `attempts` times. The
//! defaults are Linkerd's and Finagle's: 20 % plus 10 retries per second over 10 s.
//!
//! Requests deposit, retries withdraw. The window is ten slots of a tenth each, counted
//! with atomics: a request costs one clock read, one load and one add; only a retry sums
//! the window. The allowance is a rate, not a purse: one slot may spend at most a tenth
//! of the window's allowance, so that a service that starts failing sees its callers'
//! retries spread over the window rather than the whole window's worth in one burst.

use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

const SLOTS: usize = 10;

/// How much retrying a service may add.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetConfig {
    /// Retries as a share of requests (0.2: retries add at most 20 %).
    pub ratio: f64,
    /// Retries allowed per second whatever the traffic, so that a quiet service can retry.
    pub min_per_second: u32,
    pub window: Duration,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        use tarmac_route::policy::{
            DEFAULT_BUDGET_MIN_PER_SECOND, DEFAULT_BUDGET_RATIO, DEFAULT_BUDGET_WINDOW,
        };
        Self {
            ratio: DEFAULT_BUDGET_RATIO,
            min_per_second: DEFAULT_BUDGET_MIN_PER_SECOND,
            window: DEFAULT_BUDGET_WINDOW,
        }
    }
}

#[derive(Debug)]
pub struct RetryBudget {
    /// Read only when a retry is wanted; a ResiliencePolicy may change it at any time.
    config: RwLock<Option<BudgetConfig>>,
    slot_nanos: AtomicU64,
    epoch: Instant,
    slots: [Slot; SLOTS],
}

#[derive(Debug, Default)]
struct Slot {
    /// The slot's number since `epoch` (its start in slot lengths); the counts are stale
    /// when it is not the current one.
    tick: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

fn slot_nanos(window: Duration) -> u64 {
    (window.as_nanos() / SLOTS as u128).max(1) as u64
}

impl RetryBudget {
    pub fn new(config: BudgetConfig) -> Self {
        Self {
            slot_nanos: AtomicU64::new(slot_nanos(config.window)),
            config: RwLock::new(Some(config)),
            epoch: Instant::now(),
            slots: Default::default(),
        }
    }

    /// Changes the budget; `None` turns it off (retries are then bounded by their
    /// attempts alone). Counts are kept unless the window changes.
    pub fn configure(&self, config: Option<BudgetConfig>) {
        let mut current = self.config.write().unwrap_or_else(|e| e.into_inner());
        if *current == config {
            return;
        }
        if let Some(c) = &config
            && current.as_ref().is_none_or(|old| old.window != c.window)
        {
            self.slot_nanos.store(slot_nanos(c.window), Ordering::Relaxed);
            for slot in &self.slots {
                slot.tick.store(u64::MAX, Ordering::Relaxed);
            }
        }
        *current = config;
    }

    pub fn config(&self) -> Option<BudgetConfig> {
        *self.config.read().unwrap_or_else(|e| e.into_inner())
    }

    fn tick(&self) -> u64 {
        Instant::now().saturating_duration_since(self.epoch).as_nanos() as u64
            / self.slot_nanos.load(Ordering::Relaxed)
    }

    /// The current slot, cleared first if it last counted an older tick. Two threads may
    /// both clear it at a tick's start; a count or two lost there does not matter.
    fn current(&self, tick: u64) -> &Slot {
        let slot = &self.slots[tick as usize % SLOTS];
        let seen = slot.tick.load(Ordering::Relaxed);
        if seen != tick
            && slot.tick.compare_exchange(seen, tick, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            slot.requests.store(0, Ordering::Relaxed);
            slot.retries.store(0, Ordering::Relaxed);
        }
        slot
    }

    /// Counts a request (not a retry).
    pub fn deposit(&self) {
        self.current(self.tick()).requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget; false when the budget is spent.
    pub fn withdraw(&self) -> bool {
        let Some(config) = self.config() else { return true };
        let tick = self.tick();
        let (mut requests, mut retries) = (0u64, 0u64);
        for slot in &self.slots {
            // Slots of the last `SLOTS` ticks make the window.
            if tick.wrapping_sub(slot.tick.load(Ordering::Relaxed)) < SLOTS as u64 {
                requests += slot.requests.load(Ordering::Relaxed);
                retries += slot.retries.load(Ordering::Relaxed);
            }
        }
        let floor = f64::from(config.min_per_second) * config.window.as_secs_f64();
        let allowance = requests as f64 * config.ratio + floor;
        let current = self.current(tick);
        let in_slot = current.retries.load(Ordering::Relaxed);
        if (retries + 1) as f64 > allowance || (in_slot + 1) as f64 > allowance / SLOTS as f64 {
            return false;
        }
        current.retries.fetch_add(1, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Retries granted now, as many as asked.
    fn spend(budget: &RetryBudget) -> u32 {
        let mut n = 0;
        while budget.withdraw() {
            n += 1;
        }
        n
    }

    /// Retries granted over a whole window, asking at every slot (without new requests).
    async fn spend_window(budget: &RetryBudget) -> u32 {
        let mut n = 0;
        for _ in 0..SLOTS {
            n += spend(budget);
            tokio::time::advance(budget.config().unwrap().window / SLOTS as u32).await;
        }
        n
    }

    #[tokio::test(start_paused = true)]
    async fn retries_add_at_most_the_ratio_plus_the_floor() {
        let budget =
            RetryBudget::new(BudgetConfig { ratio: 0.2, min_per_second: 1, window: Duration::from_secs(10) });
        for _ in 0..1000 {
            budget.deposit();
        }
        // 20 % of 1000, plus 1 per second over 10 s: a tenth of it at a time. (The last
        // slot finds the first requests gone from the window.)
        assert_eq!(spend(&budget), 21, "no more than a tenth of the window's allowance at once");
        let later = spend_window(&budget).await;
        assert!(21 + later <= 210, "{later} more over the window");
        assert!(later >= 150, "the rest of the allowance is spent slot by slot: {later}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_service_still_gets_its_floor_and_no_more() {
        let budget = RetryBudget::new(BudgetConfig::default());
        assert_eq!(spend(&budget), 10, "10 per second");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(spend(&budget), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn old_requests_and_retries_leave_the_window() {
        let budget =
            RetryBudget::new(BudgetConfig { ratio: 0.5, min_per_second: 0, window: Duration::from_secs(10) });
        for _ in 0..100 {
            budget.deposit();
        }
        assert_eq!(spend(&budget), 5, "a tenth of 50");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!budget.withdraw(), "deposits older than the window count no more");
        for _ in 0..100 {
            budget.deposit();
        }
        assert_eq!(spend(&budget), 5, "and neither do old withdrawals");
    }

    #[tokio::test(start_paused = true)]
    async fn a_budget_turned_off_grants_every_retry_and_can_be_turned_on_again() {
        let budget =
            RetryBudget::new(BudgetConfig { ratio: 0.0, min_per_second: 0, window: Duration::from_secs(10) });
        assert!(!budget.withdraw());
        budget.configure(None);
        assert!((0..1000).all(|_| budget.withdraw()));
        budget.configure(Some(BudgetConfig {
            ratio: 0.5,
            min_per_second: 0,
            window: Duration::from_secs(2),
        }));
        for _ in 0..100 {
            budget.deposit();
        }
        assert_eq!(spend(&budget), 5, "a new window starts counting afresh: a tenth of 50");
    }

    #[tokio::test(start_paused = true)]
    async fn under_a_steady_load_retries_keep_to_the_ratio() {
        // 100 requests per second, each wanting a retry, for a minute: the budget lets
        // through 20 % of them plus 10 per second, however long it lasts.
        let budget = RetryBudget::new(BudgetConfig::default());
        let mut granted = 0u32;
        for _ in 0..600 {
            for _ in 0..10 {
                budget.deposit();
                granted += u32::from(budget.withdraw());
            }
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        let per_second = f64::from(granted) / 60.0;
        assert!(per_second <= 30.5, "{per_second} retries per second");
        assert!(per_second >= 25.0, "{per_second} retries per second");
    }

    #[tokio::test(start_paused = true)]
    async fn a_service_that_starts_failing_gets_its_retries_spread_not_in_one_burst() {
        // 60 requests per second for 10 s, all fine; then every request wants 5 retries.
        let budget = RetryBudget::new(BudgetConfig::default());
        for _ in 0..100 {
            for _ in 0..6 {
                budget.deposit();
            }
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        let mut worst_second = 0;
        for _ in 0..10 {
            let mut second = 0;
            for _ in 0..10 {
                for _ in 0..6 {
                    budget.deposit();
                    second += (0..5).filter(|_| budget.withdraw()).count();
                }
                tokio::time::advance(Duration::from_millis(100)).await;
            }
            worst_second = worst_second.max(second);
        }
        // 20 % of 60 plus 10: 22 per second, give or take a slot's rounding.
        assert!(worst_second <= 24, "{worst_second} retries in one second");
    }
}
