//! The ScaledWorker: reads queue depth and scales the target.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::Api;

use super::status::observe_only;
use super::{error_policy, Context, Error};
use crate::api::ScaledWorker;
use crate::metrics::Metrics;

/// Builds the ScaledWorker controller stream and its object cache.
pub fn controller(
    ctx: Arc<Context>,
) -> (
    impl futures::Stream<
        Item = Result<
            (kube::runtime::reflector::ObjectRef<ScaledWorker>, Action),
            impl std::error::Error,
        >,
    >,
    Store<ScaledWorker>,
) {
    let api: Api<ScaledWorker> = ctx.watched();
    let controller = Controller::new(api, watcher::Config::default().any_semantic());
    let store = controller.store();
    let stream = controller
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx);
    (stream, store)
}

/// Reconciles one ScaledWorker.
pub async fn reconcile(obj: Arc<ScaledWorker>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let labels = Metrics::kind("ScaledWorker");
    ctx.metrics.reconciliations.get_or_create(&labels).inc();
    observe_only(obj.as_ref(), &ctx, |s| {
        s.target = Some(obj.spec.target.describe())
    })
    .await?;
    ctx.metrics
        .duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    Ok(Action::requeue(Duration::from_secs(300)))
}
