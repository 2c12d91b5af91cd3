//! Per-key serial execution in arrival order.
//!
//! The consumer loop receives deliveries in order and spawns one task per
//! delivery. Deliveries for the same key (an aggregate id) must run their
//! handlers one after another, in arrival order; other keys run concurrently.
//! The loop calls [`Sequencer::enter`] synchronously, in arrival order, so the
//! queue order is the arrival order whatever the tasks' scheduling; each task
//! then awaits [`Turn::wait`] and holds the [`Turn`] while its handlers run.

use std::collections::VecDeque;
use std::collections::hash_map::{Entry, HashMap};
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

/// Which deliveries must not run concurrently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum OrderMode {
    /// Deliveries with the same key run serially in arrival order; deliveries
    /// without a key are unconstrained.
    #[default]
    PerKey,
    /// No constraint: every delivery runs as soon as it is spawned.
    None,
    /// Every delivery, keyed or not, runs serially in arrival order.
    Strict,
}

/// Hands out [`Turn`]s so that deliveries sharing a lane run one at a time.
///
/// Shared between the consumer loop and its tasks through an `Arc`: turns are
/// released from whichever thread drops them.
#[derive(Debug)]
pub(crate) struct Sequencer<K> {
    mode: OrderMode,
    state: Mutex<State<K>>,
}

#[derive(Debug)]
struct State<K> {
    /// Only lanes with at least one live turn: the map shrinks back to empty
    /// when the consumer goes idle.
    lanes: HashMap<Lane<K>, VecDeque<Waiter>>,
    next_id: u64,
}

/// A queue of deliveries that must not overlap.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Lane<K> {
    Key(K),
    /// The single lane of [`OrderMode::Strict`].
    All,
}

/// A queued turn. The front of a lane's queue holds the turn; the others wait.
#[derive(Debug)]
struct Waiter {
    id: u64,
    /// Fired when this waiter reaches the front; `None` once fired, or if it
    /// was at the front from the start.
    wake: Option<oneshot::Sender<()>>,
}

impl<K: Eq + Hash + Clone> Sequencer<K> {
    /// A sequencer with no turns in flight.
    pub(crate) fn new(mode: OrderMode) -> Self {
        Self {
            mode,
            state: Mutex::new(State {
                lanes: HashMap::new(),
                next_id: 0,
            }),
        }
    }

    /// Queues a delivery behind earlier deliveries of the same lane. Must be
    /// called in arrival order; `key` is `None` for deliveries that have no
    /// ordering constraint in [`OrderMode::PerKey`] (e.g. undecodable ones).
    pub(crate) fn enter(self: &Arc<Self>, key: Option<K>) -> Turn<K> {
        let lane = match (self.mode, key) {
            (OrderMode::None, _) | (OrderMode::PerKey, None) => return Turn::unordered(),
            (OrderMode::PerKey, Some(key)) => Lane::Key(key),
            (OrderMode::Strict, _) => Lane::All,
        };
        let mut state = self.lock();
        let id = state.next_id;
        state.next_id += 1;
        let queue = state.lanes.entry(lane.clone()).or_default();
        let (wake, ready) = if queue.is_empty() {
            (None, None)
        } else {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        };
        queue.push_back(Waiter { id, wake });
        Turn {
            place: Some(Place {
                sequencer: Arc::clone(self),
                lane,
                id,
            }),
            ready,
        }
    }

    /// How many lanes have turns in flight (held or queued). In
    /// [`OrderMode::Strict`] this is at most 1.
    #[cfg(test)]
    pub(crate) fn keys_in_flight(&self) -> usize {
        self.lock().lanes.len()
    }

    fn lock(&self) -> MutexGuard<'_, State<K>> {
        // Nothing inside the critical sections can leave the state half
        // updated, so a poisoned lock (a panic elsewhere) is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Removes a turn from its lane, waking its successor if it held the lane.
    fn release(&self, lane: Lane<K>, id: u64) {
        let mut state = self.lock();
        let Entry::Occupied(mut entry) = state.lanes.entry(lane) else {
            return;
        };
        let queue = entry.get_mut();
        // Almost always the front; a queued turn is only dropped early when
        // its task is cancelled or fails before its turn.
        let Some(index) = queue.iter().position(|w| w.id == id) else {
            return;
        };
        queue.remove(index);
        if queue.is_empty() {
            entry.remove();
        } else if index == 0
            && let Some(wake) = queue.front_mut().and_then(|w| w.wake.take())
        {
            // Cannot fail: a turn leaves the queue (in `Drop`) before its
            // receiver is dropped.
            let _ = wake.send(());
        }
    }
}

/// One delivery's place in its lane. Await [`wait`](Self::wait) before
/// running handlers and keep the turn until they finish: dropping it (also on
/// cancellation or panic) lets the next delivery of the lane run.
#[derive(Debug)]
#[must_use = "dropping a Turn releases it at once"]
pub(crate) struct Turn<K: Eq + Hash + Clone> {
    /// `None` for unordered deliveries.
    place: Option<Place<K>>,
    /// Resolves when this turn reaches the front; `None` once it has.
    ready: Option<oneshot::Receiver<()>>,
}

#[derive(Debug)]
struct Place<K: Eq + Hash + Clone> {
    sequencer: Arc<Sequencer<K>>,
    lane: Lane<K>,
    id: u64,
}

impl<K: Eq + Hash + Clone> Turn<K> {
    fn unordered() -> Self {
        Self {
            place: None,
            ready: None,
        }
    }

    /// Waits until every earlier delivery of the same lane has released its
    /// turn. Cancel-safe: if this future is dropped, waiting again resumes.
    pub(crate) async fn wait(&mut self) {
        if let Some(ready) = &mut self.ready {
            // An error would mean the lane dropped our waker, which only
            // happens once we are no longer queued: nothing left to wait for.
            let _ = ready.await;
            self.ready = None;
        }
    }
}

impl<K: Eq + Hash + Clone> Drop for Turn<K> {
    fn drop(&mut self) {
        if let Some(Place {
            sequencer,
            lane,
            id,
        }) = self.place.take()
        {
            sequencer.release(lane, id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{OrderMode, Sequencer, Turn};
    use std::future::Future;
    use std::pin::pin;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll, Waker};
    use std::time::Duration;
    use tokio::sync::Barrier;

    /// Deterministic pseudo-random numbers (splitmix64), for delays.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)) % n
        }
    }

    fn is_ready(turn: &mut Turn<u32>) -> bool {
        let mut wait = pin!(turn.wait());
        let mut cx = Context::from_waker(Waker::noop());
        wait.as_mut().poll(&mut cx) == Poll::Ready(())
    }

    /// Fails instead of hanging when a test deadlocks.
    async fn within<T>(fut: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .expect("deadlock: turns never released")
    }

    /// Runs one task per key in `keys`, entered in order, each sleeping
    /// 0-3 ms before waiting and while holding its turn. Returns the order in
    /// which handlers started and the highest number of handlers that ran at
    /// once.
    async fn run(mode: OrderMode, keys: &[Option<u32>], seed: u64) -> (Vec<usize>, usize) {
        let seq = Arc::new(Sequencer::new(mode));
        let started = Arc::new(Mutex::new(Vec::new()));
        let active = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let mut rng = Rng(seed);
        let mut tasks = Vec::new();
        for (i, &key) in keys.iter().enumerate() {
            let mut turn = seq.enter(key);
            let (before, during) = (rng.below(4), rng.below(4));
            let (started, active, peak) = (started.clone(), active.clone(), peak.clone());
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(before)).await;
                turn.wait().await;
                started.lock().expect("not poisoned").push(i);
                peak.fetch_max(active.fetch_add(1, SeqCst) + 1, SeqCst);
                tokio::time::sleep(Duration::from_millis(during)).await;
                active.fetch_sub(1, SeqCst);
                drop(turn);
            }));
        }
        for task in tasks {
            within(task).await.expect("task panicked");
        }
        assert_eq!(seq.keys_in_flight(), 0, "lanes left behind");
        let started = started.lock().expect("not poisoned").clone();
        (started, peak.load(SeqCst))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn same_key_runs_serially_in_entry_order() {
        let keys = vec![Some(7); 40];
        let (started, peak) = run(OrderMode::PerKey, &keys, 1).await;
        assert_eq!(started, (0..40).collect::<Vec<_>>());
        assert_eq!(peak, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn strict_serialises_every_key_and_unkeyed_deliveries() {
        let keys: Vec<_> = (0..40).map(|i| (i % 3 != 0).then_some(i % 5)).collect();
        let (started, peak) = run(OrderMode::Strict, &keys, 2).await;
        assert_eq!(started, (0..40).collect::<Vec<_>>());
        assert_eq!(peak, 1);
    }

    /// Both tasks must be inside their handlers at once to pass the barrier.
    async fn meet(mode: OrderMode, first: Option<u32>, second: Option<u32>) {
        let seq = Arc::new(Sequencer::new(mode));
        let barrier = Arc::new(Barrier::new(2));
        let tasks: Vec<_> = [first, second]
            .into_iter()
            .map(|key| {
                let mut turn = seq.enter(key);
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    turn.wait().await;
                    barrier.wait().await;
                })
            })
            .collect();
        for task in tasks {
            within(task).await.expect("task panicked");
        }
        assert_eq!(seq.keys_in_flight(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn different_keys_run_concurrently() {
        meet(OrderMode::PerKey, Some(1), Some(2)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unkeyed_deliveries_are_unconstrained_per_key() {
        meet(OrderMode::PerKey, Some(1), None).await;
        meet(OrderMode::PerKey, None, None).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mode_none_lets_the_same_key_overlap() {
        meet(OrderMode::None, Some(1), Some(1)).await;
    }

    #[tokio::test]
    async fn dropping_the_front_turn_unwaited_releases_the_successor() {
        let seq = Arc::new(Sequencer::new(OrderMode::PerKey));
        let first = seq.enter(Some(1));
        let mut second = seq.enter(Some(1));
        assert!(!is_ready(&mut second));
        drop(first);
        assert!(is_ready(&mut second));
        drop(second);
        assert_eq!(seq.keys_in_flight(), 0);
    }

    #[tokio::test]
    async fn dropping_a_queued_turn_keeps_its_successor_behind_the_holder() {
        let seq = Arc::new(Sequencer::new(OrderMode::PerKey));
        let mut first = seq.enter(Some(1));
        let second = seq.enter(Some(1));
        let mut third = seq.enter(Some(1));
        assert!(is_ready(&mut first));
        drop(second);
        assert!(!is_ready(&mut third), "jumped ahead of a running turn");
        drop(first);
        assert!(is_ready(&mut third));
        assert_eq!(seq.keys_in_flight(), 1);
        drop(third);
        assert_eq!(seq.keys_in_flight(), 0);
    }

    #[tokio::test]
    async fn lanes_are_removed_once_released() {
        let seq = Arc::new(Sequencer::new(OrderMode::PerKey));
        let a = seq.enter(Some(1));
        let b = seq.enter(Some(2));
        let unkeyed = seq.enter(None);
        assert_eq!(seq.keys_in_flight(), 2);
        drop(a);
        assert_eq!(seq.keys_in_flight(), 1);
        drop((b, unkeyed));
        assert_eq!(seq.keys_in_flight(), 0);
    }

    mod randomized {
        use super::{OrderMode, SeqCst, Sequencer, within};
        use proptest::prelude::*;
        use std::collections::HashMap;
        use std::sync::atomic::AtomicUsize;
        use std::sync::{Arc, Mutex};
        use std::time::Duration;

        /// A delivery: its key and how long its handler takes (yields; a
        /// value of 0 sleeps 1 ms instead, to reach the timer too).
        fn deliveries() -> impl Strategy<Value = Vec<(u8, u8)>> {
            proptest::collection::vec((0u8..6, 0u8..8), 1..80)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            #[test]
            fn no_per_key_inversions(deliveries in deliveries()) {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(4)
                    .enable_time()
                    .build()
                    .expect("runtime");
                rt.block_on(async {
                    let seq = Arc::new(Sequencer::new(OrderMode::PerKey));
                    let seen = Arc::new(Mutex::new(HashMap::<u8, Vec<usize>>::new()));
                    let active: Arc<[AtomicUsize; 6]> = Arc::default();
                    let mut counters = HashMap::<u8, usize>::new();
                    let mut tasks = Vec::new();
                    for &(key, work) in &deliveries {
                        let n = counters.entry(key).or_default();
                        let number = *n;
                        *n += 1;
                        let mut turn = seq.enter(Some(key));
                        let (seen, active) = (seen.clone(), active.clone());
                        tasks.push(tokio::spawn(async move {
                            for _ in 0..work {
                                tokio::task::yield_now().await;
                            }
                            turn.wait().await;
                            let lane = &active[usize::from(key)];
                            assert_eq!(lane.fetch_add(1, SeqCst), 0, "key {key} overlapped");
                            seen.lock().expect("not poisoned").entry(key).or_default().push(number);
                            if work == 0 {
                                tokio::time::sleep(Duration::from_millis(1)).await;
                            }
                            for _ in 0..work {
                                tokio::task::yield_now().await;
                            }
                            lane.fetch_sub(1, SeqCst);
                        }));
                    }
                    for task in tasks {
                        within(task).await.expect("task panicked");
                    }
                    assert_eq!(seq.keys_in_flight(), 0);
                    for (key, numbers) in seen.lock().expect("not poisoned").iter() {
                        let expected: Vec<_> = (0..counters[key]).collect();
                        assert_eq!(numbers, &expected, "key {key} ran out of order");
                    }
                });
            }
        }
    }
}
