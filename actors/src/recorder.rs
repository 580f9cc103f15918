//! Per-actor flight recorder: the last 256 messages each actor handled
//! (kind, one-line summary, start time, handling duration) and the one it is
//! handling right now.
//!
//! Recorders live in a process-wide table keyed by actor name, outside the
//! actors themselves, on purpose: the debug view exists to diagnose a stuck
//! actor, and a stuck actor cannot answer a query about itself. The table
//! also outlives actor restarts, so the history and the restart count of an
//! actor survive a crash of that actor. Nothing else is shared this way.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::Instant;

use crate::model::MessageRecord;

/// How many handled messages each actor keeps.
pub const CAPACITY: usize = 256;

/// A message that can describe itself for the recorder. Summaries are one
/// line and never contain secrets.
pub trait Describe {
    fn kind(&self) -> &'static str;
    fn summary(&self) -> String {
        String::new()
    }
}

#[derive(Default)]
struct Inner {
    done: VecDeque<MessageRecord>,
    in_flight: Option<MessageRecord>,
    restarts: u64,
}

/// Handle to one actor's recorder; cheap to clone.
#[derive(Clone, Default)]
pub struct Recorder {
    inner: Arc<Mutex<Inner>>,
}

static TABLE: LazyLock<Mutex<HashMap<String, Recorder>>> = LazyLock::new(Default::default);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the ring inconsistent
    // (every update is a single push/pop), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Recorder {
    /// The recorder of the actor called `name`, created on first use.
    pub fn for_actor(name: &str) -> Recorder {
        lock(&TABLE).entry(name.to_string()).or_default().clone()
    }

    /// Look up without creating.
    pub fn get(name: &str) -> Option<Recorder> {
        lock(&TABLE).get(name).cloned()
    }

    /// Start recording a message; the returned guard records its handling
    /// time when dropped (also when the handler panics).
    pub fn begin<M: Describe>(&self, msg: &M) -> Recording {
        let record = MessageRecord {
            kind: msg.kind().to_string(),
            summary: msg.summary(),
            at: crate::time::utc_now_millis(),
            handling_us: None,
        };
        lock(&self.inner).in_flight = Some(record.clone());
        Recording {
            recorder: self.clone(),
            record: Some(record),
            started: Instant::now(),
        }
    }

    pub fn note_restart(&self) {
        lock(&self.inner).restarts += 1;
    }

    pub fn restarts(&self) -> u64 {
        lock(&self.inner).restarts
    }

    /// Most recent first.
    pub fn messages(&self) -> Vec<MessageRecord> {
        lock(&self.inner).done.iter().rev().cloned().collect()
    }

    pub fn in_flight(&self) -> Option<MessageRecord> {
        lock(&self.inner).in_flight.clone()
    }
}

/// An in-flight message; finishes the record on drop.
pub struct Recording {
    recorder: Recorder,
    record: Option<MessageRecord>,
    started: Instant,
}

impl Drop for Recording {
    fn drop(&mut self) {
        if let Some(mut record) = self.record.take() {
            record.handling_us =
                Some(u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX));
            let mut inner = lock(&self.recorder.inner);
            inner.in_flight = None;
            if inner.done.len() == CAPACITY {
                inner.done.pop_front();
            }
            inner.done.push_back(record);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct M(u32);
    impl Describe for M {
        fn kind(&self) -> &'static str {
            "M"
        }
        fn summary(&self) -> String {
            format!("n={}", self.0)
        }
    }

    #[test]
    fn keeps_the_last_256_newest_first_and_tracks_in_flight() {
        let r = Recorder::for_actor("recorder-test-actor");
        for i in 0..300 {
            let _g = r.begin(&M(i));
        }
        let msgs = r.messages();
        assert_eq!(msgs.len(), CAPACITY);
        assert_eq!(msgs[0].summary, "n=299");
        assert_eq!(msgs[CAPACITY - 1].summary, "n=44");
        assert!(msgs.iter().all(|m| m.handling_us.is_some()));
        let g = r.begin(&M(1000));
        assert_eq!(r.in_flight().map(|m| m.summary), Some("n=1000".into()));
        drop(g);
        assert!(r.in_flight().is_none());
        // The same name gives the same recorder (survives actor restarts).
        assert_eq!(
            Recorder::for_actor("recorder-test-actor").messages().len(),
            CAPACITY
        );
    }
}
