//! Watches shared by the controllers: one watch per kind, one cache, several listeners.
//!
//! The Release and Environment controllers both follow Releases, and the Release and
//! ScaledWorker controllers both follow Deployments. Two watches of one kind would make the
//! API server send every change twice and the operator decode it twice; here one watch feeds
//! one cache and hands each changed object (deletions included) to every listener.
//!
//! kube-runtime's own shared reflectors do not pass deletions on, and a deleted Release must
//! leave its Environment's `status.releases`, so the fan-out is ours: unbounded channels, since
//! every listener is a controller that drains its triggers into its scheduler at once.

use std::future::Future;

use futures::channel::mpsc;
use futures::StreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;

/// Changed objects for one listener, in the shape `Controller::for_stream`, `owns_stream` and
/// `watches_stream` take.
pub type Listener<K> = mpsc::UnboundedReceiver<Result<K, watcher::Error>>;

/// One watch of `api`, each object passed through `modify` before it is cached, feeding a
/// cache and `N` listener streams. The returned future runs the watch; it ends when every
/// listener is gone.
pub fn shared<K, const N: usize>(
    api: Api<K>,
    config: watcher::Config,
    modify: impl FnMut(&mut K) + Send + 'static,
) -> (Store<K>, [Listener<K>; N], impl Future<Output = ()> + Send)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync,
    K: 'static,
{
    let (store, writer) = reflector::store::<K>();
    let channels: [_; N] = std::array::from_fn(|_| mpsc::unbounded());
    let (senders, receivers): (Vec<_>, Vec<_>) = channels.into_iter().unzip();
    let receivers: [Listener<K>; N] = receivers
        .try_into()
        .unwrap_or_else(|_| unreachable!("N channels make N receivers"));
    let kind = K::kind(&()).to_string();
    let run = async move {
        let mut changes = watcher(api, config)
            .default_backoff()
            .modify(modify)
            .reflect(writer)
            .touched_objects()
            .boxed();
        while let Some(change) = changes.next().await {
            match change {
                Ok(obj) => {
                    let mut open = 0;
                    for tx in &senders {
                        if tx.unbounded_send(Ok(obj.clone())).is_ok() {
                            open += 1;
                        }
                    }
                    if open == 0 {
                        break;
                    }
                }
                // The backoff retries the watch; the cache keeps what it had meanwhile.
                Err(e) => tracing::warn!(kind = %kind, error = %e, "watch failed; retrying"),
            }
        }
    };
    (store, receivers, run)
}
