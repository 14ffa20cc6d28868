//! Read-your-writes for reconciles that read from watch caches.
//!
//! A reconcile reads its object from the controller's watch cache. When it writes that object
//! (a finalizer, its status), the watch delivers the new version a little later; a reconcile
//! that starts in between (woken by an earlier event) would see the old copy and act on it a
//! second time: start the same migration again, record the same Event twice, write a status
//! that the previous run already replaced. [`WrittenVersions`] remembers the resourceVersion
//! each write returned, and a reconcile whose cached copy is older waits for the watch instead.

use std::collections::HashMap;
use std::sync::Mutex;

use kube::ResourceExt;

/// resourceVersion of the last write to each object, by uid; an entry is dropped as soon as
/// the cache has caught up with it, so the map only holds objects with a write in flight.
#[derive(Default, Debug)]
pub struct WrittenVersions(Mutex<HashMap<String, u64>>);

/// resourceVersions are opaque strings in the API's contract; the etcd-backed API server hands
/// out increasing integers, which is what makes them comparable here. Anything else is treated
/// as "cannot tell" and never holds a reconcile back.
fn parse(rv: Option<String>) -> Option<u64> {
    rv?.parse().ok()
}

impl WrittenVersions {
    /// Records the object a write returned.
    pub fn record<K: ResourceExt>(&self, written: &K) {
        let (Some(uid), Some(rv)) = (written.uid(), parse(written.resource_version())) else {
            return;
        };
        let mut map = self.0.lock().expect("not poisoned");
        let e = map.entry(uid).or_insert(rv);
        *e = (*e).max(rv);
    }

    /// Whether `cached` is older than the last version this process wrote.
    pub fn is_stale<K: ResourceExt>(&self, cached: &K) -> bool {
        let Some(uid) = cached.uid() else {
            return false;
        };
        let mut map = self.0.lock().expect("not poisoned");
        let Some(&written) = map.get(&uid) else {
            return false;
        };
        match parse(cached.resource_version()) {
            Some(rv) if rv < written => true,
            _ => {
                map.remove(&uid);
                false
            }
        }
    }

    /// Drops what is known about an object (it is gone).
    pub fn forget<K: ResourceExt>(&self, obj: &K) {
        if let Some(uid) = obj.uid() {
            self.0.lock().expect("not poisoned").remove(&uid);
        }
    }

    /// Objects with a write the cache has not shown yet.
    pub fn len(&self) -> usize {
        self.0.lock().expect("not poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;

    fn obj(uid: &str, rv: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                uid: Some(uid.into()),
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn unknown_objects_are_fresh() {
        let w = WrittenVersions::default();
        assert!(!w.is_stale(&obj("a", "5")));
    }

    #[test]
    fn older_copy_is_stale_until_the_cache_catches_up() {
        let w = WrittenVersions::default();
        w.record(&obj("a", "10"));
        assert!(w.is_stale(&obj("a", "9")));
        assert!(
            w.is_stale(&obj("a", "9")),
            "still stale: nothing newer was seen"
        );
        assert!(!w.is_stale(&obj("a", "10")));
        assert!(w.is_empty(), "caught up: the entry is dropped");
        assert!(!w.is_stale(&obj("a", "9")), "no entry, no opinion");
    }

    #[test]
    fn newer_copy_is_fresh_and_clears_the_entry() {
        let w = WrittenVersions::default();
        w.record(&obj("a", "10"));
        assert!(!w.is_stale(&obj("a", "12")));
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn the_highest_write_counts() {
        let w = WrittenVersions::default();
        w.record(&obj("a", "10"));
        w.record(&obj("a", "8"));
        assert!(w.is_stale(&obj("a", "9")));
    }

    #[test]
    fn objects_are_kept_apart() {
        let w = WrittenVersions::default();
        w.record(&obj("a", "10"));
        assert!(!w.is_stale(&obj("b", "3")));
        assert!(w.is_stale(&obj("a", "3")));
        w.forget(&obj("a", "3"));
        assert!(!w.is_stale(&obj("a", "3")));
    }

    #[test]
    fn versions_that_are_not_numbers_never_hold_back() {
        let w = WrittenVersions::default();
        w.record(&obj("a", "opaque-1"));
        assert!(!w.is_stale(&obj("a", "0")));
        w.record(&obj("a", "10"));
        assert!(!w.is_stale(&obj("a", "opaque-0")));
    }
}
