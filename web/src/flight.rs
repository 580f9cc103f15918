//! Single-flight engine queries: concurrent requests for the same snapshot
//! (status, history) share one engine round trip instead of each sending
//! their own messages through the actors' mailboxes.
//!
//! Why: a status snapshot is six actor calls; under load (the dashboard
//! polled by many clients, or a load test) the actors, not HTTP, were the
//! bottleneck. With this, the actors answer one query per round, whatever
//! the number of waiting requests.
//!
//! Invariants: a request joins a query only while that query is still in
//! flight, so no answer is older than the query that was running when the
//! request arrived, or, with [`SingleFlight::fresh_for`], than a query
//! that finished at most that long ago (the status snapshots: 10 ms; the
//! history has no such window). Only waiters keep a query alive (the slot
//! holds a weak reference): if every waiter gives up (timeout, client
//! gone), the query is dropped with them and the next request starts anew.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared, WeakShared};

/// One shared in-flight query producing a `T`.
pub struct SingleFlight<T: Clone> {
    /// The query in flight; it yields its answer and when it finished.
    #[allow(clippy::type_complexity)]
    current: Mutex<Option<WeakShared<BoxFuture<'static, (Instant, T)>>>>,
    /// How long a finished query's answer is served again (zero: never).
    fresh_for: Duration,
    /// The newest finished answer and when its query finished.
    last: Mutex<Option<(Instant, T)>>,
}

impl<T: Clone> Default for SingleFlight<T> {
    fn default() -> Self {
        Self::fresh_for(Duration::ZERO)
    }
}

impl<T: Clone> SingleFlight<T> {
    /// A single flight whose finished answer is also served to requests
    /// arriving within `fresh_for` after it (a bound on staleness).
    pub fn fresh_for(fresh_for: Duration) -> Self {
        Self {
            current: Mutex::new(None),
            fresh_for,
            last: Mutex::new(None),
        }
    }
}

impl<T> SingleFlight<T>
where
    T: Clone + Send + Sync + 'static,
{
    /// Forgets the query in flight and the finished answer: the next
    /// request starts a fresh query (after an action changed what it
    /// reads; callers already waiting keep theirs).
    pub fn invalidate(&self) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = None;
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The result of the query in flight, or of a new one made by `start`.
    pub async fn run<F>(&self, start: impl FnOnce() -> F) -> T
    where
        F: Future<Output = T> + Send + 'static,
    {
        if !self.fresh_for.is_zero() {
            let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((at, value)) = last.as_ref()
                && at.elapsed() < self.fresh_for
            {
                return value.clone();
            }
        }
        let flight: Shared<BoxFuture<'static, (Instant, T)>> = {
            let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
            // `peek` is `None` until the query has finished.
            match current.as_ref().and_then(WeakShared::upgrade) {
                Some(f) if f.peek().is_none() => f,
                _ => {
                    let query = start();
                    let f = async move {
                        let value = query.await;
                        (Instant::now(), value)
                    }
                    .boxed()
                    .shared();
                    *current = f.downgrade();
                    f
                }
            }
        };
        let (finished, value) = flight.await;
        if !self.fresh_for.is_zero() {
            // The query's own finish time, not this waiter's wake-up (late
            // under load): the window stays a bound on the answer's age.
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            if last.as_ref().is_none_or(|(at, _)| *at < finished) {
                *last = Some((finished, value.clone()));
            }
        }
        value
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn concurrent_callers_share_one_query_and_later_ones_start_another() {
        let flight = Arc::new(SingleFlight::<usize>::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let (release_tx, release_rx) = tokio::sync::watch::channel(false);
        let query = |calls: Arc<AtomicUsize>, mut release: tokio::sync::watch::Receiver<bool>| {
            move || async move {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                let _ = release.wait_for(|r| *r).await;
                n
            }
        };
        let waiters: Vec<_> = (0..8)
            .map(|_| {
                let flight = flight.clone();
                let q = query(calls.clone(), release_rx.clone());
                tokio::spawn(async move { flight.run(q).await })
            })
            .collect();
        // Single-threaded test runtime: yielding lets every spawned task make
        // its first poll (start or join the query) before we go on.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while calls.load(Ordering::SeqCst) == 0 {
            assert!(tokio::time::Instant::now() < deadline, "no query started");
            tokio::task::yield_now().await;
        }
        tokio::task::yield_now().await;
        release_tx.send_replace(true);
        for w in waiters {
            assert_eq!(w.await.unwrap(), 1, "every caller joined the first query");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // The first query is over: the next caller gets a fresh one.
        let again = flight.run(query(calls.clone(), release_rx.clone())).await;
        assert_eq!(again, 2);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_finished_answer_is_served_again_only_within_its_window() {
        let window = Duration::from_millis(200);
        let flight = SingleFlight::<usize>::fresh_for(window);
        let calls = Arc::new(AtomicUsize::new(0));
        let query = |calls: Arc<AtomicUsize>| {
            move || async move { calls.fetch_add(1, Ordering::SeqCst) + 1 }
        };
        let started = std::time::Instant::now();
        assert_eq!(flight.run(query(calls.clone())).await, 1);
        let again = flight.run(query(calls.clone())).await;
        if started.elapsed() < window {
            assert_eq!(again, 1, "served again within the window");
        }
        // The window is the thing under test: let it pass.
        tokio::time::sleep(window + Duration::from_millis(50)).await;
        let fresh = flight.run(query(calls.clone())).await;
        assert_eq!(
            fresh,
            calls.load(Ordering::SeqCst),
            "a new query after the window"
        );
        assert!(fresh >= 2);
        // Without a window, every finished query is followed by a new one.
        let plain = SingleFlight::<usize>::default();
        let calls = Arc::new(AtomicUsize::new(0));
        assert_eq!(plain.run(query(calls.clone())).await, 1);
        assert_eq!(plain.run(query(calls.clone())).await, 2);
    }

    /// The window starts when the query finished, not when a waiter that
    /// joined it got round to reading the answer (late under load).
    #[tokio::test]
    async fn a_late_waiter_does_not_extend_the_window() {
        let window = Duration::from_millis(100);
        let flight = SingleFlight::<usize>::fresh_for(window);
        let calls = Arc::new(AtomicUsize::new(0));
        let (release_tx, release_rx) = tokio::sync::watch::channel(false);
        let query = |calls: Arc<AtomicUsize>, mut release: tokio::sync::watch::Receiver<bool>| {
            move || async move {
                let _ = release.wait_for(|r| *r).await;
                calls.fetch_add(1, Ordering::SeqCst) + 1
            }
        };
        // Both join the first query; only `early` is polled to the end.
        let mut late = Box::pin(flight.run(query(calls.clone(), release_rx.clone())));
        assert!(futures::poll!(&mut late).is_pending());
        let early = flight.run(query(calls.clone(), release_rx.clone()));
        release_tx.send_replace(true);
        assert_eq!(early.await, 1);
        // The window passes; then the late waiter reads the same answer.
        tokio::time::sleep(window + Duration::from_millis(50)).await;
        assert_eq!(late.await, 1);
        // The answer is older than the window: a new query.
        assert_eq!(
            flight.run(query(calls.clone(), release_rx.clone())).await,
            2
        );
    }

    /// After an action, the next read must see it: no reuse window, no
    /// joining a query that started before.
    #[tokio::test]
    async fn invalidate_makes_the_next_request_start_a_fresh_query() {
        let flight = SingleFlight::<usize>::fresh_for(Duration::from_secs(60));
        let calls = Arc::new(AtomicUsize::new(0));
        let query = |calls: Arc<AtomicUsize>| {
            move || async move { calls.fetch_add(1, Ordering::SeqCst) + 1 }
        };
        assert_eq!(flight.run(query(calls.clone())).await, 1);
        assert_eq!(
            flight.run(query(calls.clone())).await,
            1,
            "within the window"
        );
        flight.invalidate();
        assert_eq!(flight.run(query(calls.clone())).await, 2);
        // A query in flight when the action happened is not joined either.
        let (release_tx, release_rx) = tokio::sync::watch::channel(false);
        let slow = |calls: Arc<AtomicUsize>, mut release: tokio::sync::watch::Receiver<bool>| {
            move || async move {
                let _ = release.wait_for(|r| *r).await;
                calls.fetch_add(1, Ordering::SeqCst) + 1
            }
        };
        flight.invalidate();
        let mut before = Box::pin(flight.run(slow(calls.clone(), release_rx.clone())));
        assert!(futures::poll!(&mut before).is_pending());
        flight.invalidate();
        let after = flight.run(query(calls.clone()));
        assert_eq!(after.await, 3, "a fresh query, not the one in flight");
        release_tx.send_replace(true);
        assert_eq!(before.await, 4);
    }

    #[tokio::test]
    async fn an_abandoned_query_is_dropped_not_joined_later() {
        let flight = SingleFlight::<u32>::default();
        let stuck = tokio::time::timeout(
            Duration::from_millis(20),
            flight.run(futures::future::pending::<u32>),
        )
        .await;
        assert!(stuck.is_err());
        // Its only waiter gave up, so the stuck query is gone: a new caller
        // must get a fresh query, not hang on the old one.
        let got = tokio::time::timeout(Duration::from_secs(1), flight.run(|| async { 7 })).await;
        assert_eq!(got.ok(), Some(7));
    }
}
