//! Release behaviour on the Kubernetes platform, against a real API server whose kwok nodes
//! run pods: migrations first, health-gated rollout, automatic rollback, gates, cleanup.
//!
//! Failure is provoked with the kwok stages of tests/testenv/kwok/pod-stages.yaml:
//! `slipway.test/fail:latest` makes a Job pod fail, `slipway.test/unready:latest` keeps a pod
//! unready, `slipway.test/slow:latest` makes a Job pod take 8 seconds.

mod common;

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use serde_json::json;
use slipway::api::{find_condition, Environment, Phase, Release};

const FAIL: &str = "slipway.test/fail:latest";
const UNREADY: &str = "slipway.test/unready:latest";
const SLOW: &str = "slipway.test/slow:latest";

impl Fixture {
    fn releases(&self) -> Api<Release> {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }
    fn envs(&self) -> Api<Environment> {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }
    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }
    fn jobs(&self) -> Api<Job> {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }
    async fn env(&self, name: &str, extra: serde_json::Value) {
        let mut spec = json!({ "platform": { "kubernetes": {} } });
        merge(&mut spec, extra);
        let e: Environment = serde_json::from_value(json!({
            "apiVersion": "slipway.dev/v1alpha1", "kind": "Environment",
            "metadata": { "name": name }, "spec": spec
        }))
        .unwrap();
        self.envs()
            .create(&PostParams::default(), &e)
            .await
            .unwrap();
    }
    async fn release(&self, name: &str, spec: serde_json::Value) {
        let r: Release = serde_json::from_value(json!({
            "apiVersion": "slipway.dev/v1alpha1", "kind": "Release",
            "metadata": { "name": name }, "spec": spec
        }))
        .unwrap();
        self.releases()
            .create(&PostParams::default(), &r)
            .await
            .unwrap();
    }
    async fn patch_spec(&self, name: &str, spec: serde_json::Value) {
        self.releases()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": spec })),
            )
            .await
            .unwrap();
    }
    /// Waits until the Release reports `phase` for its current generation.
    async fn phase(&self, name: &str, phase: Phase, timeout: Duration) -> Release {
        let api = self.releases();
        let what = format!("Release {name} to reach {phase:?}");
        let r = tokio::time::timeout(timeout, async {
            loop {
                if let Ok(r) = api.get(name).await {
                    let st = r.status.clone().unwrap_or_default();
                    if st.phase == Some(phase) && st.observed_generation == r.metadata.generation {
                        return Some(r);
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await
        .ok()
        .flatten();
        match r {
            Some(r) => r,
            None => {
                let now = api.get(name).await.ok().and_then(|r| r.status);
                panic!(
                    "timed out waiting for {what}; status: {now:#?}\noperator log:\n{}",
                    self.op.logs()
                )
            }
        }
    }
    async fn image_of(&self, deployment: &str) -> Option<String> {
        let d = self.deployments().get_opt(deployment).await.unwrap()?;
        d.spec?
            .template
            .spec?
            .containers
            .first()
            .map(|c| c.image.clone().unwrap_or_default())
    }
}

fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
    if let (Some(a), serde_json::Value::Object(b)) = (a.as_object_mut(), b.clone()) {
        for (k, v) in b {
            a.insert(k, v);
        }
    }
}

fn spec(
    version: &str,
    migration_image: Option<&str>,
    api_image: Option<&str>,
) -> serde_json::Value {
    let mut s = json!({
        "environment": "dev",
        "version": version,
        "services": [
            { "name": "api", "image": api_image.map(String::from).unwrap_or(format!("example.test/shop-api:{version}")),
              "ports": [ { "name": "http", "port": 3000 } ],
              "replicas": { "min": 2, "max": 2 },
              "healthCheck": { "path": "/health", "port": "http" },
              "ingress": { "external": true, "host": "api.shop.test", "path": "/" } },
            { "name": "worker", "image": format!("example.test/shop-worker:{version}"),
              "replicas": { "min": 1, "max": 3 } }
        ],
        "jobs": [ { "name": "nightly", "image": format!("example.test/shop-jobs:{version}"), "schedule": "0 2 * * *",
                    "timeoutSeconds": 1800, "retries": 1 } ],
        "rollout": { "progressDeadlineSeconds": 60 }
    });
    if let Some(img) = migration_image {
        s["migration"] = json!({ "image": img, "command": ["migrate"], "timeoutSeconds": 120 });
    }
    s
}

#[tokio::test]
async fn happy_path_runs_the_migration_before_any_deployment_changes() {
    let f = Fixture::new("rel-happy").await;
    f.env("dev", json!({})).await;

    // Watch Jobs and Deployments from before the Release exists and record the order of what
    // the API server reports.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let jobs_w = watcher(f.jobs(), watcher::Config::default()).applied_objects();
    let deps_w = watcher(f.deployments(), watcher::Config::default()).applied_objects();
    let tx2 = tx.clone();
    let watch_jobs = tokio::spawn(async move {
        let mut s = std::pin::pin!(jobs_w);
        while let Some(Ok(j)) = s.next().await {
            let done = j
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Complete" && c.status == "True");
            let _ = tx2.send(if done {
                "job-complete".into()
            } else {
                "job-running".into()
            });
        }
    });
    let watch_deps = tokio::spawn(async move {
        let mut s = std::pin::pin!(deps_w);
        while let Some(Ok(_)) = s.next().await {
            let _ = tx.send("deployment".into());
        }
    });

    f.release(
        "shop",
        spec("v1.0.0", Some("example.test/shop-migrator:v1.0.0"), None),
    )
    .await;
    let r = f
        .phase("shop", Phase::Succeeded, Duration::from_secs(90))
        .await;
    watch_jobs.abort();
    watch_deps.abort();
    let mut seen = vec![];
    while let Ok(e) = rx.try_recv() {
        seen.push(e);
    }
    let first_dep = seen
        .iter()
        .position(|e| e == "deployment")
        .expect("a Deployment was created");
    let complete = seen
        .iter()
        .position(|e| e == "job-complete")
        .expect("the migration Job completed");
    assert!(
        complete < first_dep,
        "a Deployment appeared before the migration completed: {seen:?}"
    );

    let st = r.status.unwrap();
    assert_eq!(st.version.as_deref(), Some("v1.0.0"));
    assert_eq!(st.migration.as_ref().unwrap().state, "Succeeded");
    for t in ["Ready", "MigrationSucceeded", "RolledOut", "Healthy"] {
        assert_eq!(
            find_condition(&st.conditions, t).map(|c| c.status.as_str()),
            Some("True"),
            "{t}: {:?}",
            st.conditions
        );
    }
    // Abnormal-true conditions (kstatus) are absent while they do not hold.
    for t in ["Reconciling", "Stalled", "RolledBack"] {
        assert!(
            find_condition(&st.conditions, t).is_none(),
            "{t}: {:?}",
            st.conditions
        );
    }
    let api = f.deployments().get("shop-api").await.unwrap();
    assert_eq!(api.spec.as_ref().unwrap().replicas, Some(2));
    assert_eq!(api.status.unwrap().available_replicas, Some(2));
    let probe = api.spec.unwrap().template.spec.unwrap().containers[0]
        .readiness_probe
        .clone()
        .unwrap();
    assert_eq!(probe.http_get.unwrap().path.as_deref(), Some("/health"));
    assert!(Api::<Service>::namespaced(f.client.clone(), &f.ns.name)
        .get_opt("shop-api")
        .await
        .unwrap()
        .is_some());
    assert!(
        Api::<Service>::namespaced(f.client.clone(), &f.ns.name)
            .get_opt("shop-worker")
            .await
            .unwrap()
            .is_none(),
        "no Service without ports"
    );
    let cron = Api::<CronJob>::namespaced(f.client.clone(), &f.ns.name)
        .get("shop-nightly")
        .await
        .unwrap();
    assert_eq!(cron.spec.as_ref().unwrap().schedule, "0 2 * * *");
    assert_eq!(
        cron.spec.unwrap().job_template.spec.unwrap().backoff_limit,
        Some(1)
    );
    assert_eq!(
        st.services
            .iter()
            .find(|s| s.name == "api")
            .map(|s| s.ready_replicas),
        Some(2)
    );
    let ing =
        Api::<k8s_openapi::api::networking::v1::Ingress>::namespaced(f.client.clone(), &f.ns.name)
            .get("shop-api")
            .await
            .expect("an Ingress for the service with ingress");
    assert_eq!(
        ing.spec.unwrap().rules.unwrap()[0].host.as_deref(),
        Some("api.shop.test")
    );
    let hpas = Api::<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler>::namespaced(
        f.client.clone(),
        &f.ns.name,
    );
    let hpa = hpas.get("shop-worker").await.expect("an HPA for min < max");
    assert_eq!(
        (
            hpa.spec.as_ref().unwrap().min_replicas,
            hpa.spec.as_ref().unwrap().max_replicas
        ),
        (Some(1), 3)
    );
    assert!(
        hpas.get_opt("shop-api").await.unwrap().is_none(),
        "no HPA for a fixed count"
    );
    // The Succeeded Event is recorded right after the status write that the wait above saw.
    let events_api = f.api::<k8s_openapi::api::events::v1::Event>();
    let events = eventually(
        "the Succeeded Event on the Release",
        Duration::from_secs(10),
        || async {
            let l = events_api.list(&ListParams::default()).await.ok()?;
            l.items
                .iter()
                .any(|e| e.reason.as_deref() == Some("Succeeded"))
                .then_some(l)
        },
    )
    .await;
    let reasons: Vec<String> = events
        .items
        .iter()
        .filter_map(|e| e.reason.clone())
        .collect();
    // The migration's success and the rollout it unblocks share one Event (RollingOut).
    let rolling_out = events
        .items
        .iter()
        .find(|e| e.reason.as_deref() == Some("RollingOut"))
        .and_then(|e| e.note.clone())
        .unwrap_or_default();
    assert!(
        rolling_out.contains("succeeded") && rolling_out.contains("rolling out"),
        "RollingOut Event note: {rolling_out:?}"
    );
    for r in ["MigrationStarted", "RollingOut", "Succeeded"] {
        // Exactly one: a reconcile that read an older copy than its own last write would
        // record the step again.
        assert_eq!(
            reasons.iter().filter(|x| *x == r).count(),
            1,
            "want one {r} Event on the Release; Events: {reasons:?}"
        );
    }
}

#[tokio::test]
async fn a_service_scaled_by_a_scaled_worker_keeps_its_replica_count_across_rollouts() {
    let f = Fixture::new("rel-scaled").await;
    f.env("dev", json!({})).await;
    let sw: slipway::api::ScaledWorker = serde_json::from_value(json!({
        "apiVersion": "slipway.dev/v1alpha1", "kind": "ScaledWorker", "metadata": { "name": "worker" },
        "spec": { "target": { "release": { "name": "shop", "service": "worker" } }, "minReplicas": 0, "maxReplicas": 10,
                  "triggers": [ { "name": "q", "targetPerReplica": 5, "redis": { "address": "redis://127.0.0.1:1", "list": "q" } } ] }
    }))
    .unwrap();
    Api::<slipway::api::ScaledWorker>::namespaced(f.client.clone(), &f.ns.name)
        .create(&PostParams::default(), &sw)
        .await
        .unwrap();
    f.release("shop", spec("v1", None, None)).await;
    f.phase("shop", Phase::Succeeded, Duration::from_secs(90))
        .await;
    // Someone else (the ScaledWorker) sets the count through the scale subresource.
    f.deployments()
        .patch_scale(
            "shop-worker",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 4}})),
        )
        .await
        .unwrap();
    f.patch_spec("shop", spec("v2", None, None)).await;
    f.phase("shop", Phase::Succeeded, Duration::from_secs(90))
        .await;
    let d = f.deployments().get("shop-worker").await.unwrap();
    assert_eq!(
        d.spec.as_ref().unwrap().replicas,
        Some(4),
        "the Release fought the ScaledWorker over replicas"
    );
    assert_eq!(
        f.image_of("shop-worker").await.as_deref(),
        Some("example.test/shop-worker:v2")
    );
    let hpas = Api::<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler>::namespaced(
        f.client.clone(),
        &f.ns.name,
    );
    assert!(
        hpas.get_opt("shop-worker").await.unwrap().is_none(),
        "no HPA for a service a ScaledWorker scales"
    );
}

#[tokio::test]
async fn version_bump_runs_a_second_migration_then_rolls_out() {
    let f = Fixture::new("rel-bump").await;
    f.env("dev", json!({})).await;
    f.release("shop", spec("v1", Some("example.test/m:v1"), None))
        .await;
    f.phase("shop", Phase::Succeeded, Duration::from_secs(90))
        .await;
    f.patch_spec("shop", spec("v2", Some("example.test/m:v2"), None))
        .await;
    let r = f
        .phase("shop", Phase::Succeeded, Duration::from_secs(90))
        .await;
    let st = r.status.unwrap();
    assert_eq!(st.version.as_deref(), Some("v2"));
    assert_eq!(
        st.history.first().map(|h| (h.version.as_str(), h.phase)),
        Some(("v1", Phase::Succeeded))
    );
    let jobs = f
        .jobs()
        .list(&ListParams::default().labels("app.kubernetes.io/component=migration"))
        .await
        .unwrap();
    assert_eq!(jobs.items.len(), 2, "one migration Job per revision");
    assert_eq!(
        f.image_of("shop-api").await.as_deref(),
        Some("example.test/shop-api:v2")
    );
}

#[tokio::test]
async fn failed_migration_keeps_the_previous_version_serving() {
    let f = Fixture::new("rel-migfail").await;
    f.env("dev", json!({})).await;
    f.release("shop", spec("v1", Some("example.test/m:v1"), None))
        .await;
    f.phase("shop", Phase::Succeeded, Duration::from_secs(90))
        .await;
    f.patch_spec("shop", spec("v2", Some(FAIL), None)).await;
    let r = f
        .phase("shop", Phase::Failed, Duration::from_secs(90))
        .await;
    let st = r.status.unwrap();
    let ready = find_condition(&st.conditions, "Ready").unwrap();
    assert_eq!(ready.reason, "MigrationFailed", "{ready:?}");
    assert_eq!(
        find_condition(&st.conditions, "Stalled").unwrap().status,
        "True"
    );
    assert_eq!(
        st.version.as_deref(),
        Some("v1"),
        "the previous version keeps serving"
    );
    assert_eq!(
        f.image_of("shop-api").await.as_deref(),
        Some("example.test/shop-api:v1")
    );
    assert_eq!(
        f.image_of("shop-worker").await.as_deref(),
        Some("example.test/shop-worker:v1")
    );
    // Not retried by itself.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let jobs = f
        .jobs()
        .list(&ListParams::default().labels("app.kubernetes.io/component=migration"))
        .await
        .unwrap();
    assert_eq!(jobs.items.len(), 2);
}

#[tokio::test]
async fn rollout_past_its_deadline_is_rolled_back_to_the_previous_images() {
    let f = Fixture::new("rel-deadline").await;
    f.env("dev", json!({})).await;
    f.release("shop", spec("v1", None, None)).await;
    f.phase("shop", Phase::Succeeded, Duration::from_secs(90))
        .await;
    let mut s = spec("v2", None, Some(UNREADY));
    s["rollout"]["progressDeadlineSeconds"] = json!(6);
    f.patch_spec("shop", s).await;
    let r = f
        .phase("shop", Phase::RolledBack, Duration::from_secs(90))
        .await;
    let st = r.status.unwrap();
    assert_eq!(st.version.as_deref(), Some("v1"));
    assert_eq!(
        find_condition(&st.conditions, "RolledBack").unwrap().status,
        "True"
    );
    assert!(find_condition(&st.conditions, "Ready")
        .unwrap()
        .message
        .contains("ProgressDeadlineExceeded"));
    eventually("images restored to v1", Duration::from_secs(30), || async {
        (f.image_of("shop-api").await.as_deref() == Some("example.test/shop-api:v1")
            && f.image_of("shop-worker").await.as_deref() == Some("example.test/shop-worker:v1"))
        .then_some(())
    })
    .await;
}

/// A loopback HTTP server whose answer the test switches between 200 and 503.
async fn health_server(code: Arc<AtomicU16>) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let code = code.load(Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 {code} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    port
}

#[tokio::test]
async fn failed_verification_is_rolled_back() {
    let f = Fixture::new("rel-verify").await;
    f.env("dev", json!({})).await;
    let code = Arc::new(AtomicU16::new(200));
    let port = health_server(code.clone()).await;
    let verify = json!({ "url": format!("http://127.0.0.1:{port}/health"), "attempts": 3, "intervalSeconds": 1 });
    let mut s1 = spec("v1", None, None);
    s1["rollout"]["verify"] = verify.clone();
    f.release("shop", s1).await;
    let r = f
        .phase("shop", Phase::Succeeded, Duration::from_secs(90))
        .await;
    assert_eq!(
        find_condition(&r.status.unwrap().conditions, "Healthy")
            .unwrap()
            .status,
        "True"
    );

    code.store(503, Ordering::SeqCst);
    let mut s2 = spec("v2", None, None);
    s2["rollout"]["verify"] = verify;
    f.patch_spec("shop", s2).await;
    let r = f
        .phase("shop", Phase::RolledBack, Duration::from_secs(90))
        .await;
    let st = r.status.unwrap();
    assert!(
        find_condition(&st.conditions, "Ready")
            .unwrap()
            .message
            .contains("HealthCheckFailed"),
        "{:?}",
        st.conditions
    );
    assert_eq!(st.verify_attempts, Some(3));
    eventually("images restored to v1", Duration::from_secs(30), || async {
        (f.image_of("shop-api").await.as_deref() == Some("example.test/shop-api:v1")).then_some(())
    })
    .await;
}

#[tokio::test]
async fn operator_killed_mid_migration_runs_it_once_and_finishes() {
    let mut f = Fixture::new("rel-restart").await;
    f.env("dev", json!({})).await;
    f.release("shop", spec("v1", Some(SLOW), None)).await;
    f.phase("shop", Phase::Migrating, Duration::from_secs(60))
        .await;
    eventually(
        "the migration Job to exist",
        Duration::from_secs(30),
        || async {
            let l = f.jobs().list(&ListParams::default()).await.ok()?;
            (!l.items.is_empty()).then_some(())
        },
    )
    .await;
    f.restart_operator();
    f.phase("shop", Phase::Succeeded, Duration::from_secs(90))
        .await;
    let jobs = f.jobs().list(&ListParams::default()).await.unwrap();
    assert_eq!(jobs.items.len(), 1, "exactly one migration Job");
    let pods = Api::<Pod>::namespaced(f.client.clone(), &f.ns.name)
        .list(&ListParams::default().labels("app.kubernetes.io/component=migration"))
        .await
        .unwrap();
    assert_eq!(pods.items.len(), 1, "the migration ran once");
}

/// The most migration Jobs seen running at once, and the names of Jobs in the order first seen.
type JobsSeen = Arc<std::sync::Mutex<(usize, Vec<String>)>>;

/// Watches `jobs` for [`JobsSeen`] until the task is aborted.
fn watch_concurrent_jobs(jobs: Api<Job>) -> (JobsSeen, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(std::sync::Mutex::new((0usize, Vec::<String>::new())));
    let s2 = seen.clone();
    let task = tokio::spawn(async move {
        let mut running = std::collections::HashSet::new();
        let mut s = std::pin::pin!(watcher(jobs, watcher::Config::default()).applied_objects());
        while let Some(Ok(j)) = s.next().await {
            let name = j.metadata.name.clone().unwrap_or_default();
            let done = j
                .status
                .as_ref()
                .is_some_and(|s| s.succeeded.unwrap_or(0) > 0 || s.failed.unwrap_or(0) > 0);
            let mut seen = s2.lock().unwrap();
            if !seen.1.contains(&name) {
                seen.1.push(name.clone());
            }
            if done {
                running.remove(&name);
            } else {
                running.insert(name);
            }
            seen.0 = seen.0.max(running.len());
        }
    });
    (seen, task)
}

#[tokio::test]
async fn migrations_beyond_the_limit_wait_their_turn_also_across_a_restart() {
    let mut f = Fixture::with_args("rel-slots", &["--max-concurrent-migrations", "1"]).await;
    f.env("dev", json!({})).await;
    let (seen, watch) = watch_concurrent_jobs(f.jobs());

    f.release("first", spec("v1", Some(SLOW), None)).await;
    f.phase("first", Phase::Migrating, Duration::from_secs(60))
        .await;
    f.release("second", spec("v1", Some(SLOW), None)).await;
    let second = f
        .phase("second", Phase::Pending, Duration::from_secs(30))
        .await;
    let ready = find_condition(&second.status.clone().unwrap().conditions, "Ready")
        .cloned()
        .expect("a queued Release has a Ready condition");
    assert_eq!(ready.status, "False");
    assert_eq!(ready.reason, "MigrationQueued");
    assert!(
        ready.message.contains("--max-concurrent-migrations"),
        "the message names the setting: {}",
        ready.message
    );
    assert!(
        second.status.as_ref().unwrap().migration.is_none(),
        "no migration recorded while queued"
    );
    // "first" runs for 8 s: meanwhile the gauges say one running, one queued.
    eventually(
        "the metrics to show one migration running and one queued",
        Duration::from_secs(5),
        || async {
            let running = f.op.metric("slipway_migrations_running", &[]).await;
            let queued = f.op.metric("slipway_migrations_queued", &[]).await;
            (running == 1 && queued == 1).then_some(())
        },
    )
    .await;
    f.release(
        "third",
        spec("v1", Some("example.test/shop-migrator:v1"), None),
    )
    .await;
    f.phase("third", Phase::Pending, Duration::from_secs(30))
        .await;

    // "second" asked first, so it starts when "first" finishes; restart the operator while
    // its (slow) migration runs: the new process must count it and keep "third" waiting.
    f.phase("second", Phase::Migrating, Duration::from_secs(60))
        .await;
    f.restart_operator();
    for name in ["first", "second", "third"] {
        f.phase(name, Phase::Succeeded, Duration::from_secs(90))
            .await;
    }
    watch.abort();
    let (most, order) = seen.lock().unwrap().clone();
    assert_eq!(most, 1, "at most one migration Job ran at a time");
    let order: Vec<String> = order
        .iter()
        .map(|n| n.split('-').next().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        order,
        ["first", "second", "third"],
        "first come, first served"
    );

    let events = f
        .api::<k8s_openapi::api::events::v1::Event>()
        .list(&ListParams::default())
        .await
        .unwrap();
    let queued: Vec<_> = events
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some("MigrationQueued"))
        .filter_map(|e| e.regarding.as_ref()?.name.clone())
        .collect();
    assert!(
        queued.contains(&"second".to_string()) && queued.contains(&"third".to_string()),
        "an Event says each queued Release waits: {queued:?}"
    );
    assert!(!queued.contains(&"first".to_string()), "{queued:?}");
}

#[tokio::test]
async fn migration_job_deleted_after_success_is_not_run_again() {
    let f = Fixture::new("rel-gc").await;
    f.env("dev", json!({})).await;
    f.release("shop", spec("v1", Some("example.test/m:v1"), None))
        .await;
    f.phase("shop", Phase::Succeeded, Duration::from_secs(90))
        .await;
    for j in f.jobs().list(&ListParams::default()).await.unwrap().items {
        f.jobs()
            .delete(&j.metadata.name.unwrap(), &DeleteParams::background())
            .await
            .unwrap();
    }
    // Nudge a reconcile, twice, and give the operator time to (wrongly) recreate the Job.
    for i in 0..2 {
        f.releases()
            .patch(
                "shop",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {"nudge": i.to_string()}}})),
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let jobs = f.jobs().list(&ListParams::default()).await.unwrap();
    assert!(
        jobs.items
            .iter()
            .all(|j| j.metadata.deletion_timestamp.is_some()),
        "the migration was re-created: {:?}",
        jobs.items
            .iter()
            .map(|j| &j.metadata.name)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        f.releases()
            .get("shop")
            .await
            .unwrap()
            .status
            .unwrap()
            .phase,
        Some(Phase::Succeeded)
    );
}

#[tokio::test]
async fn promotion_gate_waits_for_the_version_to_succeed_upstream() {
    let f = Fixture::new("rel-promo").await;
    f.env("staging", json!({})).await;
    f.env("prod", json!({ "promotion": { "from": "staging" } }))
        .await;
    let mut prod = spec("v7", None, None);
    prod["environment"] = json!("prod");
    prod["app"] = json!("shop");
    f.release("shop-prod", prod).await;
    let r = f
        .phase(
            "shop-prod",
            Phase::AwaitingPromotion,
            Duration::from_secs(60),
        )
        .await;
    let ready = find_condition(&r.status.as_ref().unwrap().conditions, "Ready")
        .unwrap()
        .clone();
    assert_eq!(ready.reason, "PromotionPending");
    assert!(ready.message.contains("staging"), "{}", ready.message);
    assert!(
        f.deployments()
            .get_opt("shop-prod-api")
            .await
            .unwrap()
            .is_none(),
        "nothing deployed while gated"
    );

    let mut staging = spec("v7", None, None);
    staging["environment"] = json!("staging");
    staging["app"] = json!("shop");
    f.release("shop-staging", staging).await;
    f.phase("shop-staging", Phase::Succeeded, Duration::from_secs(90))
        .await;
    f.phase("shop-prod", Phase::Succeeded, Duration::from_secs(90))
        .await;
}

#[tokio::test]
async fn approval_gate_waits_for_the_annotation() {
    let f = Fixture::new("rel-approve").await;
    f.env("dev", json!({ "promotion": { "requireApproval": true } }))
        .await;
    f.release("shop", spec("v3", None, None)).await;
    let r = f
        .phase("shop", Phase::AwaitingApproval, Duration::from_secs(60))
        .await;
    assert!(find_condition(&r.status.unwrap().conditions, "Ready")
        .unwrap()
        .message
        .contains("slipway.dev/approved-version=v3"));
    // Approving another version changes nothing.
    let annotate =
        |v: &str| json!({"metadata": {"annotations": {"slipway.dev/approved-version": v}}});
    f.releases()
        .patch(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(annotate("v2")),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        f.releases()
            .get("shop")
            .await
            .unwrap()
            .status
            .unwrap()
            .phase,
        Some(Phase::AwaitingApproval)
    );
    assert!(f.deployments().get_opt("shop-api").await.unwrap().is_none());
    f.releases()
        .patch(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(annotate("v3")),
        )
        .await
        .unwrap();
    f.phase("shop", Phase::Succeeded, Duration::from_secs(90))
        .await;
}

#[tokio::test]
async fn freeze_blocks_new_rollouts_until_lifted() {
    let f = Fixture::new("rel-freeze").await;
    f.env("dev", json!({ "freeze": true })).await;
    f.release("shop", spec("v1", Some("example.test/m:v1"), None))
        .await;
    let r = f
        .phase("shop", Phase::Frozen, Duration::from_secs(60))
        .await;
    assert_eq!(
        find_condition(&r.status.unwrap().conditions, "Ready")
            .unwrap()
            .reason,
        "Frozen"
    );
    assert!(
        f.jobs()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "no migration while frozen"
    );
    f.envs()
        .patch(
            "dev",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"freeze": false}})),
        )
        .await
        .unwrap();
    f.phase("shop", Phase::Succeeded, Duration::from_secs(90))
        .await;
}

#[tokio::test]
async fn deleting_a_release_removes_what_it_created_and_removed_services_are_deleted() {
    let f = Fixture::new("rel-delete").await;
    f.env("dev", json!({})).await;
    f.release("shop", spec("v1", None, None)).await;
    f.phase("shop", Phase::Succeeded, Duration::from_secs(90))
        .await;
    // Everything is in the Release's namespace with an owner reference: the garbage collector
    // cleans up, and no finalizer holds up the Release's (or its namespace's) deletion.
    let rel = f.releases().get("shop").await.unwrap();
    assert!(
        rel.metadata.finalizers.unwrap_or_default().is_empty(),
        "no finalizer expected for a same-namespace Release"
    );
    assert!(f
        .deployments()
        .get_opt("shop-worker")
        .await
        .unwrap()
        .is_some());

    // Remove the worker service: its Deployment goes.
    let mut s = spec("v2", None, None);
    s["services"]
        .as_array_mut()
        .unwrap()
        .retain(|s| s["name"] != "worker");
    f.releases()
        .patch(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"services": s["services"], "version": "v2"}})),
        )
        .await
        .unwrap();
    f.phase("shop", Phase::Succeeded, Duration::from_secs(90))
        .await;
    assert!(
        f.deployments()
            .get_opt("shop-worker")
            .await
            .unwrap()
            .is_none(),
        "removed service still deployed"
    );

    f.releases()
        .delete("shop", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the Release and its objects to be gone",
        Duration::from_secs(60),
        || async {
            let r = f.releases().get_opt("shop").await.ok()?;
            let d = f
                .deployments()
                .list(&ListParams::default().labels("slipway.dev/release=shop"))
                .await
                .ok()?;
            let s = Api::<Service>::namespaced(f.client.clone(), &f.ns.name)
                .list(&ListParams::default().labels("slipway.dev/release=shop"))
                .await
                .ok()?;
            let live = d
                .items
                .iter()
                .map(|d| &d.metadata)
                .chain(s.items.iter().map(|s| &s.metadata))
                .filter(|m| m.deletion_timestamp.is_none())
                .count();
            (r.is_none() && live == 0).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_deployment_deleted_by_hand_is_put_back_at_once() {
    let f = Fixture::new("rel-repair").await;
    f.env("dev", json!({})).await;
    f.release("shop", spec("v1", None, None)).await;
    f.phase("shop", Phase::Succeeded, Duration::from_secs(90))
        .await;
    let old = f.deployments().get("shop-api").await.unwrap();
    f.deployments()
        .delete("shop-api", &DeleteParams::background())
        .await
        .unwrap();
    // The deletion reaches the Release through the Deployment watch; its next periodic
    // reconcile is minutes away, so only the watch can bring the Deployment back this soon.
    let new = eventually(
        "shop-api to be recreated",
        Duration::from_secs(30),
        || async {
            let d = f.deployments().get_opt("shop-api").await.ok()??;
            (d.metadata.uid != old.metadata.uid).then_some(d)
        },
    )
    .await;
    let image = new.spec.unwrap().template.spec.unwrap().containers[0]
        .image
        .clone();
    assert_eq!(image.as_deref(), Some("example.test/shop-api:v1"));
}

/// Labels of the operator's write requests in `slipway_api_requests_total`.
const WRITES: [&str; 4] = [
    "verb=\"POST\"",
    "verb=\"PUT\"",
    "verb=\"PATCH\"",
    "verb=\"DELETE\"",
];

#[tokio::test]
async fn reconciles_of_a_converged_release_make_no_write_requests() {
    let f = Fixture::new("rel-noop").await;
    f.env("dev", json!({})).await;
    f.release("shop", spec("v1", Some("example.test/m:v1"), None))
        .await;
    f.phase("shop", Phase::Succeeded, Duration::from_secs(90))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = f.op.metric("slipway_api_requests_total{", &WRITES).await;
    assert!(before > 0, "the rollout itself must have written");
    // Each annotation change wakes the Release (and its Environment) controller.
    for i in 0..10 {
        f.releases()
            .patch(
                "shop",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {"touch": i.to_string()}}})),
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = f.op.metric("slipway_api_requests_total{", &WRITES).await;
    assert_eq!(
        after,
        before,
        "no-op reconciles wrote {} requests; log:\n{}",
        after - before,
        f.op.logs()
    );
}

/// `kubectl` from PATH (make test puts the local control plane's on it).
fn kubectl() -> std::process::Command {
    let mut c = std::process::Command::new("kubectl");
    c.env("KUBECONFIG", kubeconfig_path());
    c
}

#[tokio::test]
async fn kubectl_wait_for_ready_waits_until_the_rollout_is_done() {
    let f = Fixture::new("rel-wait").await;
    f.env("dev", json!({})).await;
    f.release("shop", spec("v1", Some(SLOW), None)).await;
    let ns = f.ns.name.clone();
    // While the 8-second migration runs, the Release must not look Ready.
    let early = tokio::task::spawn_blocking({
        let ns = ns.clone();
        move || {
            kubectl()
                .args([
                    "wait",
                    "--for=condition=Ready",
                    "release/shop",
                    "-n",
                    &ns,
                    "--timeout=3s",
                ])
                .output()
                .expect("kubectl must be on PATH (make test adds the local control plane's)")
        }
    })
    .await
    .unwrap();
    assert!(
        !early.status.success(),
        "kubectl wait returned Ready during the migration"
    );
    let done = tokio::task::spawn_blocking(move || {
        kubectl()
            .args([
                "wait",
                "--for=condition=Ready",
                "release/shop",
                "-n",
                &ns,
                "--timeout=90s",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        done.status.success(),
        "kubectl wait failed: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    let r = f.releases().get("shop").await.unwrap();
    assert_eq!(r.status.unwrap().phase, Some(Phase::Succeeded));
}
