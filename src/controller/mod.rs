//! The controllers: one per kind, started together in one process by [`run`].
//!
//! Each reconcile follows one pipeline: load the object → decide (pure) → apply → write
//! status. Status is written with server-side apply under one field manager, and only when it
//! differs from what the API server already holds, so a no-op reconcile sends no write.

pub mod environment;
pub mod freshness;
pub mod release;
pub mod scaled_worker;
pub mod slots;
mod status;
pub mod watches;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::runtime::events::Reporter;
use kube::runtime::watcher;
use kube::{Api, Client, Resource};
use prometheus_client::registry::Registry;

use crate::admin::{self, Health};
use crate::api::{Environment, Release, ScaledWorker};
use crate::metrics::Metrics;

pub use status::{StatusObject, MANAGER};

/// What every reconcile gets.
#[derive(Clone)]
pub struct Context {
    pub client: Client,
    pub metrics: Metrics,
    pub reporter: Reporter,
    /// Watch only this namespace (`--namespace`); None watches all.
    pub namespace: Option<String>,
    /// ScaledWorker polling: the shared trigger-source connections and per-object timers.
    pub scaling: Arc<scaled_worker::Scaling>,
    /// Versions this process wrote that the watch caches may not show yet.
    pub written: Arc<freshness::WrittenVersions>,
}

impl Context {
    /// An Api over the watched scope: one namespace or all of them.
    pub fn watched<K>(&self) -> Api<K>
    where
        K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    {
        match &self.namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        }
    }
}

/// Errors a reconcile can end with; each maps to a metric label.
#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("{kind} {name} has no namespace (Slipway kinds are namespaced)")]
    MissingNamespace { kind: &'static str, name: String },
    #[error("could not serialise status: {0}")]
    Serialize(#[from] serde_json::Error),
    #[error("finalizer: {0}")]
    Finalizer(String),
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::MissingNamespace { .. } => "missing_namespace",
            Error::Serialize(_) => "serialize",
            Error::Finalizer(_) => "finalizer",
        }
    }
}

/// Requeue policy after a failed reconcile: retry soon, the watch also retriggers.
pub fn error_policy<K>(obj: Arc<K>, err: &Error, ctx: Arc<Context>) -> Action
where
    K: Resource<DynamicType = ()>,
{
    let kind = K::kind(&()).to_string();
    ctx.metrics
        .failures
        .get_or_create(&crate::metrics::ErrorLabels {
            kind: kind.clone(),
            error: err.metric_label().into(),
        })
        .inc();
    tracing::warn!(
        kind,
        name = obj.meta().name.as_deref().unwrap_or(""),
        namespace = obj.meta().namespace.as_deref().unwrap_or(""),
        error = %err,
        "reconcile failed; retrying in 10s"
    );
    Action::requeue(Duration::from_secs(10))
}

/// Options of `slipway run`.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub admin_addr: SocketAddr,
    /// Watch only this namespace.
    pub namespace: Option<String>,
    /// Reconcile only while holding this Lease.
    pub leader: Option<crate::leader::LeaderConfig>,
    /// How many migration Jobs may run at once; more Releases wait in a queue (0: no limit).
    pub max_concurrent_migrations: usize,
}

/// Fails with a message saying what to do when a CRD is missing.
pub async fn check_crds_installed(client: &Client, namespace: Option<&str>) -> anyhow::Result<()> {
    async fn probe<K>(client: &Client, namespace: Option<&str>) -> anyhow::Result<()>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        match api.list_metadata(&ListParams::default().limit(1)).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => anyhow::bail!(
                "the CustomResourceDefinition {}.{} is not installed in this cluster; install the CRDs first \
                 (`kubectl apply --server-side -f crds/` or `helm install slipway charts/slipway`)",
                K::plural(&()),
                K::group(&())
            ),
            Err(e) => Err(e).with_context(|| format!("listing {} to check the CRD is installed", K::plural(&()))),
        }
    }
    probe::<Environment>(client, namespace).await?;
    probe::<Release>(client, namespace).await?;
    probe::<ScaledWorker>(client, namespace).await?;
    Ok(())
}

/// Resolves once the store has seen its initial list. Re-polled on a short timer: the store's
/// readiness signal wakes only one waiter (the controller's own), so a second waiter could
/// otherwise sleep forever.
pub(crate) async fn synced<K>(
    store: &kube::runtime::reflector::Store<K>,
) -> Result<(), kube::runtime::reflector::store::WriterDropped>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    loop {
        if let Ok(res) =
            tokio::time::timeout(Duration::from_millis(250), store.wait_until_ready()).await
        {
            return res;
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// What the operator keeps of a Deployment in its cache: Slipway's own in full but for
/// managed fields (the Release controller compares plan hashes and reads availability);
/// anyone else's only as far as a ScaledWorker poll needs (name, namespace, replicas).
fn slim_deployment(d: &mut Deployment) {
    d.metadata.managed_fields = None;
    let ours = d
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(crate::platform::kubernetes::render::LABEL_MANAGED_BY))
        .is_some_and(|v| v == crate::platform::kubernetes::render::MANAGED_BY);
    if ours {
        return;
    }
    d.metadata.annotations = None;
    d.metadata.labels = None;
    d.status = None;
    if let Some(spec) = d.spec.as_mut() {
        spec.template = Default::default();
        spec.selector = Default::default();
        spec.strategy = None;
    }
}

/// Runs the three controllers and the admin server until SIGTERM or SIGINT.
pub async fn run(config: kube::Config, opts: RunOptions) -> anyhow::Result<()> {
    let metrics = Metrics::default();
    let client = metrics
        .counting_client(config)
        .context("building the Kubernetes client")?;
    check_crds_installed(&client, opts.namespace.as_deref()).await?;

    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let health = Health::default();
    let ctx = Arc::new(Context {
        client: client.clone(),
        metrics: metrics.clone(),
        reporter: Reporter {
            controller: MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        },
        namespace: opts.namespace.clone(),
        scaling: Arc::new(
            scaled_worker::Scaling::new().context("setting up the trigger-source connections")?,
        ),
        written: Arc::default(),
    });

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let admin_router = admin::router(health.clone(), Arc::new(registry));
    let mut admin_stop = stop_rx.clone();
    let admin_task = tokio::spawn(admin::serve(opts.admin_addr, admin_router, async move {
        let _ = admin_stop.wait_for(|s| *s).await;
    }));

    if let Some(cfg) = &opts.leader {
        // A standby is healthy and ready (so rolling updates of the operator progress); it
        // just does not reconcile.
        health.set_ready(true);
        tokio::select! {
            _ = crate::leader::acquire(&client, cfg) => {}
            _ = shutdown_signal() => {
                let _ = stop_tx.send(true);
                let _ = admin_task.await;
                return Ok(());
            }
        }
        health.set_ready(false);
        let (client, cfg) = (client.clone(), cfg.clone());
        tokio::spawn(async move {
            let why = crate::leader::hold(&client, &cfg).await;
            // Stop at once: a replica that lost the Lease must not write again.
            tracing::error!(reason = %why, "lost the leader Lease; exiting");
            eprintln!("slipway: lost the leader Lease ({why}); exiting");
            std::process::exit(2);
        });
    }

    // One watch per kind, shared: Releases by the Release and Environment controllers,
    // Deployments by the Release controller (its own, in full) and the ScaledWorker
    // controller (any Deployment's replica count).
    let (rel_store, [env_releases, rel_releases], rel_watch) = watches::shared(
        ctx.watched::<Release>(),
        watcher::Config::default().any_semantic(),
        |_| {},
    );
    let (dep_store, [rel_deployments], dep_watch) = watches::shared(
        ctx.watched::<Deployment>(),
        watcher::Config::default().any_semantic(),
        slim_deployment,
    );
    tokio::spawn(rel_watch);
    tokio::spawn(dep_watch);
    let (env_ctrl, env_store) =
        environment::controller(ctx.clone(), (rel_store.clone(), env_releases));
    let rel_ctrl = release::controller(
        ctx.clone(),
        (rel_store.clone(), rel_releases),
        (dep_store.clone(), rel_deployments),
        opts.max_concurrent_migrations,
    );
    let (sw_ctrl, sw_store) = scaled_worker::controller(ctx.clone(), dep_store.clone());

    let readiness = {
        let health = health.clone();
        let metrics = metrics.clone();
        async move {
            let synced = futures::future::try_join4(
                synced(&env_store),
                synced(&rel_store),
                synced(&sw_store),
                synced(&dep_store),
            )
            .await;
            if synced.is_ok() {
                tracing::info!("watch caches synced; ready");
                health.set_ready(true);
                metrics.ready.set(1);
            }
        }
    };
    tokio::spawn(readiness);

    tracing::info!(admin = %opts.admin_addr, namespace = opts.namespace.as_deref().unwrap_or("(all)"), "controllers for Environment, Release and ScaledWorker started");
    // Each controller stops on SIGTERM/SIGINT (shutdown_on_signal) after finishing the
    // reconciles in flight.
    futures::join!(
        env_ctrl.for_each(|_| async {}),
        rel_ctrl.for_each(|_| async {}),
        sw_ctrl.for_each(|_| async {})
    );
    tracing::info!("controllers stopped; shutting down");
    health.set_ready(false);
    let _ = stop_tx.send(true);
    match admin_task.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e).context(format!("admin server on {}", opts.admin_addr)),
        Err(e) => Err(e).context("admin server task"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(labels: serde_json::Value) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": "d", "namespace": "n", "labels": labels,
                          "annotations": { "slipway.dev/plan-hash": "abc" },
                          "managedFields": [ { "manager": "kubectl", "operation": "Update" } ] },
            "spec": { "replicas": 3, "selector": { "matchLabels": { "a": "b" } },
                      "template": { "metadata": { "labels": { "a": "b" } },
                                    "spec": { "containers": [ { "name": "c", "image": "i" } ] } } },
            "status": { "availableReplicas": 3 }
        }))
        .unwrap()
    }

    #[test]
    fn slipway_deployments_are_kept_whole_others_only_their_replica_count() {
        let mut ours = deployment(serde_json::json!({ "app.kubernetes.io/managed-by": "slipway" }));
        slim_deployment(&mut ours);
        assert!(ours.metadata.managed_fields.is_none());
        assert!(ours.metadata.annotations.is_some());
        assert_eq!(ours.status.unwrap().available_replicas, Some(3));
        assert_eq!(
            ours.spec.unwrap().template.spec.unwrap().containers[0]
                .image
                .as_deref(),
            Some("i")
        );

        let mut theirs = deployment(serde_json::json!({ "app.kubernetes.io/managed-by": "helm" }));
        slim_deployment(&mut theirs);
        assert_eq!(theirs.metadata.name.as_deref(), Some("d"));
        assert!(theirs.metadata.annotations.is_none() && theirs.metadata.labels.is_none());
        assert!(theirs.status.is_none());
        let spec = theirs.spec.unwrap();
        assert_eq!(spec.replicas, Some(3));
        assert!(spec.template.spec.is_none());
    }
}
