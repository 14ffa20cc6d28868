//! How many migrations may run at once (`--max-concurrent-migrations`).
//!
//! A GitOps sync or a scripted bump can make hundreds of Releases start a revision in the same
//! second. Each one's first step is a migration Job against its database; started all at once
//! they compete for the databases, the nodes and the control plane, and every one of them
//! finishes later than if they had taken turns. Slots make them take turns: a Release starts its
//! migration only while fewer than the limit are running, otherwise it stays `Pending` (reason
//! `MigrationQueued`) in a first-come queue and is woken when a slot frees up.
//!
//! Only the start of a migration takes a slot. A migration recorded as Running (also one this
//! process did not start, e.g. before a restart) holds one until it finishes; rollouts, retries
//! of a revision whose migration already Succeeded, and Releases without a migration never wait.

use std::collections::{HashSet, VecDeque};
use std::hash::Hash;
use std::sync::Mutex;

use futures::channel::mpsc;

/// The answer to "may this object start its migration now?".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    Granted,
    /// Waiting; `position` is 1 for the next object to get a slot.
    Queued {
        position: usize,
        running: usize,
    },
}

/// Migration slots, keyed by object (`K` is `ObjectRef<Release>` in the operator).
pub struct Slots<K> {
    /// 0: no limit (running migrations are still counted, for the metrics).
    limit: usize,
    inner: Mutex<Inner<K>>,
    wake: mpsc::UnboundedSender<K>,
}

struct Inner<K> {
    seeded: bool,
    holders: HashSet<K>,
    waiting: VecDeque<K>,
}

impl<K: Hash + Eq + Clone> Slots<K> {
    /// Slots for at most `limit` running migrations (0: unlimited), and the stream of objects
    /// to reconcile again because a slot became theirs.
    pub fn new(limit: usize) -> (Self, mpsc::UnboundedReceiver<K>) {
        let (wake, woken) = mpsc::unbounded();
        (
            Slots {
                limit,
                inner: Mutex::new(Inner {
                    seeded: false,
                    holders: HashSet::new(),
                    waiting: VecDeque::new(),
                }),
                wake,
            },
            woken,
        )
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    fn cap(&self) -> usize {
        if self.limit == 0 {
            usize::MAX
        } else {
            self.limit
        }
    }

    /// Whether [`Slots::seed`] was called.
    pub fn is_seeded(&self) -> bool {
        self.lock().seeded
    }

    /// Counts the migrations already running when this process starts (from the cache after
    /// its initial list). Only the first call counts.
    pub fn seed(&self, running: impl IntoIterator<Item = K>) {
        let mut inner = self.lock();
        if inner.seeded {
            return;
        }
        inner.seeded = true;
        inner.holders.extend(running);
    }

    /// Takes a slot for `k` if one is free and nobody queued earlier is waiting for it;
    /// otherwise queues `k` (once). `exists` says whether an object still exists: slots and
    /// places of deleted objects are given up here.
    pub fn try_acquire(&self, k: &K, exists: impl Fn(&K) -> bool) -> Slot {
        let mut inner = self.lock();
        if inner.holders.contains(k) {
            return Slot::Granted;
        }
        let before = inner.holders.len();
        inner.holders.retain(|h| exists(h));
        inner.waiting.retain(|w| w == k || exists(w));
        let ahead = inner
            .waiting
            .iter()
            .position(|w| w == k)
            .unwrap_or(inner.waiting.len());
        let running = inner.holders.len();
        if running.saturating_add(ahead) < self.cap() {
            inner.waiting.retain(|w| w != k);
            inner.holders.insert(k.clone());
            Slot::Granted
        } else {
            if ahead == inner.waiting.len() {
                inner.waiting.push_back(k.clone());
            }
            if running < before {
                self.wake_next(&inner);
            }
            Slot::Queued {
                position: ahead + 1,
                running,
            }
        }
    }

    /// Records that `k`'s migration is running (it holds a slot even over the limit: it is
    /// running already).
    pub fn hold(&self, k: &K) {
        let mut inner = self.lock();
        inner.waiting.retain(|w| w != k);
        inner.holders.insert(k.clone());
    }

    /// `k` runs no migration (finished, or never needed one): frees its slot and its place in
    /// the queue, and wakes whoever is next.
    pub fn release(&self, k: &K) {
        let mut inner = self.lock();
        let held = inner.holders.remove(k);
        let len = inner.waiting.len();
        inner.waiting.retain(|w| w != k);
        if held || inner.waiting.len() != len {
            self.wake_next(&inner);
        }
    }

    /// Running migrations and queued objects.
    pub fn counts(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.holders.len(), inner.waiting.len())
    }

    /// Wakes the queued objects that the free slots now belong to. A woken object that no
    /// longer needs its slot releases it in its reconcile, which wakes the next one.
    fn wake_next(&self, inner: &Inner<K>) {
        let free = self.cap().saturating_sub(inner.holders.len());
        for k in inner.waiting.iter().take(free) {
            let _ = self.wake.unbounded_send(k.clone());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<K>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(_: &&'static str) -> bool {
        true
    }

    fn woken(rx: &mut mpsc::UnboundedReceiver<&'static str>) -> Vec<&'static str> {
        let mut out = vec![];
        while let Ok(k) = rx.try_recv() {
            out.push(k);
        }
        out
    }

    #[test]
    fn grants_up_to_the_limit_then_queues_first_come_first_served() {
        let (s, mut rx) = Slots::new(2);
        s.seed([]);
        assert_eq!(s.try_acquire(&"a", all), Slot::Granted);
        assert_eq!(s.try_acquire(&"b", all), Slot::Granted);
        // Asking again while holding is still a yes, and takes nothing more.
        assert_eq!(s.try_acquire(&"a", all), Slot::Granted);
        assert_eq!(
            s.try_acquire(&"c", all),
            Slot::Queued {
                position: 1,
                running: 2
            }
        );
        assert_eq!(
            s.try_acquire(&"d", all),
            Slot::Queued {
                position: 2,
                running: 2
            }
        );
        // Asking again keeps the place.
        assert_eq!(
            s.try_acquire(&"c", all),
            Slot::Queued {
                position: 1,
                running: 2
            }
        );
        assert!(woken(&mut rx).is_empty());

        s.release(&"a");
        assert_eq!(woken(&mut rx), vec!["c"], "the first in the queue is woken");
        // A newcomer does not overtake the queue, nor does the second in line.
        assert_eq!(
            s.try_acquire(&"e", all),
            Slot::Queued {
                position: 3,
                running: 1
            }
        );
        assert!(matches!(s.try_acquire(&"d", all), Slot::Queued { .. }));
        assert_eq!(s.try_acquire(&"c", all), Slot::Granted);
        assert_eq!(s.counts(), (2, 2));
    }

    #[test]
    fn running_migrations_found_at_start_count() {
        let (s, _rx) = Slots::new(2);
        assert!(!s.is_seeded());
        s.seed(["x", "y"]);
        assert!(s.is_seeded());
        // Only the first seed counts: a later call must not re-add finished migrations.
        s.release(&"x");
        s.seed(["x", "y"]);
        assert_eq!(s.counts(), (1, 0));
        assert_eq!(s.try_acquire(&"a", all), Slot::Granted);
        assert!(matches!(s.try_acquire(&"b", all), Slot::Queued { .. }));
    }

    #[test]
    fn deleted_objects_give_up_their_slots_and_places() {
        let (s, mut rx) = Slots::new(1);
        s.seed([]);
        assert_eq!(s.try_acquire(&"gone", all), Slot::Granted);
        assert!(matches!(s.try_acquire(&"a", all), Slot::Queued { .. }));
        assert!(matches!(s.try_acquire(&"b", all), Slot::Queued { .. }));
        // "gone" was deleted without a reconcile that could release it; "a" is next.
        let exists = |k: &&str| *k != "gone";
        assert!(matches!(
            s.try_acquire(&"b", exists),
            Slot::Queued { position: 2, .. }
        ));
        assert_eq!(woken(&mut rx), vec!["a"]);
        assert_eq!(s.try_acquire(&"a", exists), Slot::Granted);
    }

    #[test]
    fn leaving_the_queue_wakes_the_next_one() {
        let (s, mut rx) = Slots::new(1);
        s.seed([]);
        assert_eq!(s.try_acquire(&"a", all), Slot::Granted);
        assert!(matches!(s.try_acquire(&"b", all), Slot::Queued { .. }));
        assert!(matches!(s.try_acquire(&"c", all), Slot::Queued { .. }));
        s.release(&"a");
        assert_eq!(woken(&mut rx), vec!["b"]);
        // "b" no longer needs a migration (its spec changed): "c" gets the slot.
        s.release(&"b");
        assert_eq!(woken(&mut rx), vec!["c"]);
        assert_eq!(s.try_acquire(&"c", all), Slot::Granted);
    }

    #[test]
    fn a_migration_seen_running_holds_a_slot_even_over_the_limit() {
        let (s, _rx) = Slots::new(1);
        s.seed([]);
        assert_eq!(s.try_acquire(&"a", all), Slot::Granted);
        s.hold(&"b");
        assert_eq!(s.counts(), (2, 0));
        s.release(&"a");
        assert!(matches!(s.try_acquire(&"c", all), Slot::Queued { .. }));
    }

    #[test]
    fn zero_means_no_limit() {
        let (s, mut rx) = Slots::new(0);
        s.seed(["x"]);
        for k in ["a", "b", "c"] {
            assert_eq!(s.try_acquire(&k, all), Slot::Granted);
        }
        s.release(&"a");
        // Still counted, for the metrics.
        assert_eq!(s.counts(), (3, 0));
        assert!(woken(&mut rx).is_empty());
    }
}
