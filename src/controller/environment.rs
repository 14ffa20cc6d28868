//! The Environment: validates the platform, prepares the target and lists its Releases.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::Api;

use super::status::observe_only;
use super::{error_policy, Context, Error};
use crate::api::Environment;
use crate::metrics::Metrics;

/// Builds the Environment controller stream and its object cache.
pub fn controller(
    ctx: Arc<Context>,
) -> (
    impl futures::Stream<
        Item = Result<
            (kube::runtime::reflector::ObjectRef<Environment>, Action),
            impl std::error::Error,
        >,
    >,
    Store<Environment>,
) {
    let api: Api<Environment> = ctx.watched();
    let controller = Controller::new(api, watcher::Config::default().any_semantic());
    let store = controller.store();
    let stream = controller
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx);
    (stream, store)
}

/// Reconciles one Environment.
pub async fn reconcile(obj: Arc<Environment>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let labels = Metrics::kind("Environment");
    ctx.metrics.reconciliations.get_or_create(&labels).inc();
    observe_only(obj.as_ref(), &ctx, |s| {
        s.platform = Some(obj.spec.platform.kind_name().to_string())
    })
    .await?;
    ctx.metrics
        .duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    Ok(Action::requeue(Duration::from_secs(300)))
}
