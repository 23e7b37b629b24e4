//! Fair slots across routes: a route alone may use every slot, but when several routes have work
//! the next free slot goes to the route running the fewest, and a route running nothing may start
//! one more beyond the slots (up to a burst), so a route whose calls sleep or spin through their
//! whole budget cannot hold up the others.
//!
//! The worker keeps two of these per tick: one for jobs being processed (reading the original and
//! the plugin call; storing the results happens after the turn, under a store permit) and one for
//! the plugin calls themselves.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// A tick's two gates: jobs being processed (twice the plugin slots, so one job's reads and
/// writes overlap another's call) and plugin calls (`concurrency`). Both burst by what the
/// sandbox's pool holds beyond `concurrency`, at most `concurrency` more.
/// `stop` is the tick's shutdown: a job still waiting for its turn then gives its message back at
/// once instead of starting during the grace period.
#[derive(Debug, Clone)]
pub struct Gates {
    pub jobs: Arc<FairSlots>,
    pub calls: Arc<FairSlots>,
    /// Jobs storing their results, outside their turn at `jobs` (as many as it has slots): a
    /// job takes one before it gives its turn up, so at most twice the turns hold results.
    pub stores: Arc<tokio::sync::Semaphore>,
    pub stop: tokio_util::sync::CancellationToken,
}

impl Gates {
    pub fn new(concurrency: usize, pool: usize, stop: tokio_util::sync::CancellationToken) -> Self {
        let burst = pool.saturating_sub(concurrency).min(concurrency);
        Gates {
            jobs: FairSlots::new(2 * concurrency, burst),
            calls: FairSlots::new(concurrency, burst),
            stores: Arc::new(tokio::sync::Semaphore::new(2 * concurrency + burst)),
            stop,
        }
    }
}

/// Slots shared fairly by the routes (keyed by route prefix).
#[derive(Debug)]
pub struct FairSlots {
    /// Slots any route may fill.
    capacity: usize,
    /// How many more a route running nothing may take when every slot is full.
    burst: usize,
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Debug, Default)]
struct State {
    running: usize,
    per_route: HashMap<Arc<str>, usize>,
    /// Waiters by arrival: ticket -> route.
    waiting: BTreeMap<u64, Arc<str>>,
    next_ticket: u64,
}

impl State {
    fn running_of(&self, route: &str) -> usize {
        self.per_route.get(route).copied().unwrap_or(0)
    }

    /// Whether waiter `ticket` of `route` may start now: a free slot goes to the waiter whose
    /// route runs the fewest (the earliest of those); a route running nothing may burst.
    fn may_start(&self, ticket: u64, route: &str, capacity: usize, burst: usize) -> bool {
        let mine = self.running_of(route);
        if mine == 0 && self.running < capacity + burst {
            // Among bursting waiters, the earliest of each route only.
            return self.waiting.iter().find(|(_, r)| &***r == route).is_none_or(|(t, _)| *t == ticket);
        }
        if self.running >= capacity {
            return false;
        }
        let best = self.waiting.iter().min_by_key(|(t, r)| (self.running_of(r), **t));
        best.is_none_or(|(t, _)| *t == ticket)
    }
}

/// A held slot; dropping it frees the slot and wakes the waiters.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<FairSlots>,
    route: Arc<str>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.slots.state.lock().unwrap_or_else(|p| p.into_inner());
        state.running -= 1;
        if let Some(n) = state.per_route.get_mut(&self.route) {
            *n -= 1;
            if *n == 0 {
                state.per_route.remove(&self.route);
            }
        }
        drop(state);
        self.slots.changed.notify_waiters();
    }
}

/// Removes a waiter that gave up (its future was dropped) so it does not hold up the others.
struct Waiting<'a> {
    slots: &'a FairSlots,
    ticket: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut state = self.slots.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.waiting.remove(&self.ticket).is_some() {
            drop(state);
            self.slots.changed.notify_waiters();
        }
    }
}

impl FairSlots {
    pub fn new(capacity: usize, burst: usize) -> Arc<Self> {
        Arc::new(FairSlots { capacity: capacity.max(1), burst, state: Mutex::default(), changed: Notify::new() })
    }

    /// Waits for a slot for `route`.
    pub async fn acquire(self: &Arc<Self>, route: &str) -> Slot {
        let route: Arc<str> = Arc::from(route);
        let ticket = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let ticket = state.next_ticket;
            state.next_ticket += 1;
            state.waiting.insert(ticket, route.clone());
            ticket
        };
        let waiting = Waiting { slots: self, ticket };
        loop {
            // Registered before the check, so a release between the check and the wait wakes us.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                if state.may_start(ticket, &route, self.capacity, self.burst) {
                    state.waiting.remove(&ticket);
                    state.running += 1;
                    *state.per_route.entry(route.clone()).or_default() += 1;
                    drop(state);
                    std::mem::forget(waiting);
                    // Others may start too (a burst, or a second free slot).
                    self.changed.notify_waiters();
                    return Slot { slots: self.clone(), route };
                }
            }
            changed.await;
        }
    }

    /// Slots in use now.
    pub fn running(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).running
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Whether `acquire` completes within a short wait.
    async fn starts(slots: &Arc<FairSlots>, route: &str) -> Option<Slot> {
        tokio::time::timeout(Duration::from_millis(50), slots.acquire(route)).await.ok()
    }

    #[tokio::test]
    async fn a_route_alone_uses_every_slot_and_no_more() {
        let slots = FairSlots::new(2, 2);
        let a1 = starts(&slots, "a").await.unwrap();
        let _a2 = starts(&slots, "a").await.unwrap();
        assert!(starts(&slots, "a").await.is_none(), "a third call of the same route waits");
        drop(a1);
        assert!(starts(&slots, "a").await.is_some());
    }

    #[tokio::test]
    async fn a_route_running_nothing_starts_beside_a_full_route() {
        let slots = FairSlots::new(2, 1);
        let _a = [starts(&slots, "a").await.unwrap(), starts(&slots, "a").await.unwrap()];
        let b = starts(&slots, "b").await.expect("b runs nothing: it bursts");
        assert!(starts(&slots, "c").await.is_none(), "the burst is spent");
        drop(b);
        assert!(starts(&slots, "c").await.is_some());
    }

    #[tokio::test]
    async fn a_free_slot_goes_to_the_route_running_fewest() {
        let slots = FairSlots::new(3, 0);
        let _a = [starts(&slots, "a").await.unwrap(), starts(&slots, "a").await.unwrap()];
        let b = starts(&slots, "b").await.unwrap();
        let spawn = |route: &'static str| {
            let slots = slots.clone();
            tokio::spawn(async move { slots.acquire(route).await })
        };
        // "a" asks first, "c" second...
        let a3 = spawn("a");
        tokio::time::sleep(Duration::from_millis(20)).await;
        let c = spawn("c");
        tokio::time::sleep(Duration::from_millis(20)).await;
        // ...but the free slot goes to "c", which runs nothing, not to "a", which runs two.
        drop(b);
        let c = tokio::time::timeout(Duration::from_secs(1), c).await.expect("c starts").unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!a3.is_finished(), "a waits for the next free slot");
        drop(c);
        tokio::time::timeout(Duration::from_secs(1), a3).await.expect("then a").unwrap();
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_does_not_block_the_others() {
        let slots = FairSlots::new(1, 0);
        let a = starts(&slots, "a").await.unwrap();
        assert!(starts(&slots, "b").await.is_none(), "timed out: its ticket is withdrawn");
        drop(a);
        assert!(starts(&slots, "c").await.is_some());
        assert_eq!(slots.running(), 0);
    }
}
