//! `make bench-release`: 200 Releases of 3 services each, created at once against the local
//! control plane, compared with creating the same Jobs and Deployments directly.
//!
//! Prints: seconds until all Releases are Ready, the operator's peak RSS and CPU seconds, the
//! write requests made by 200 no-op reconciles, and the baseline and ratio. Figures, not
//! assertions: this is a benchmark, not a test.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use futures::stream::{self, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use slipway::api::{Environment, Release};

const RELEASES: usize = 200;
const SERVICES: usize = 3;
const CONCURRENCY: usize = 50;
const WRITES: [&str; 4] = [
    "verb=\"POST\"",
    "verb=\"PUT\"",
    "verb=\"PATCH\"",
    "verb=\"DELETE\"",
];

fn job(i: usize) -> Job {
    serde_json::from_value(json!({
        "metadata": { "name": format!("app{i}-migrate") },
        "spec": { "backoffLimit": 0, "template": { "spec": { "restartPolicy": "Never",
            "containers": [ { "name": "migrate", "image": format!("example.test/m:{i}") } ] } } }
    }))
    .unwrap()
}

fn deployment(i: usize, s: usize) -> Deployment {
    let name = format!("app{i}-svc{s}");
    serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": { "replicas": 1, "selector": { "matchLabels": { "app": name } },
            "template": { "metadata": { "labels": { "app": name } },
                "spec": { "containers": [ { "name": "svc", "image": format!("example.test/svc{s}:{i}") } ] } } }
    }))
    .unwrap()
}

async fn wait_until(what: &str, timeout: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Creates the same Jobs, then Deployments, directly; returns seconds until all are done.
async fn baseline(client: &Client, ns: &str) -> f64 {
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let deps: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let t0 = Instant::now();
    stream::iter(0..RELEASES)
        .for_each_concurrent(CONCURRENCY, |i| {
            let jobs = jobs.clone();
            let deps = deps.clone();
            async move {
                jobs.create(&PostParams::default(), &job(i)).await.unwrap();
                let name = format!("app{i}-migrate");
                loop {
                    let j = jobs.get(&name).await.unwrap();
                    if j.status.and_then(|s| s.succeeded).unwrap_or(0) > 0 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                for s in 0..SERVICES {
                    deps.create(&PostParams::default(), &deployment(i, s))
                        .await
                        .unwrap();
                }
            }
        })
        .await;
    wait_until(
        "baseline Deployments available",
        Duration::from_secs(600),
        async || {
            let l = deps.list(&ListParams::default()).await.unwrap();
            l.items.len() == RELEASES * SERVICES
                && l.items.iter().all(|d| {
                    d.status
                        .as_ref()
                        .and_then(|s| s.available_replicas)
                        .unwrap_or(0)
                        >= 1
                })
        },
    )
    .await;
    t0.elapsed().as_secs_f64()
}

fn release(i: usize) -> Release {
    let services: Vec<_> = (0..SERVICES)
        .map(|s| json!({ "name": format!("svc{s}"), "image": format!("example.test/svc{s}:{i}") }))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "slipway.dev/v1alpha1", "kind": "Release",
        "metadata": { "name": format!("app{i}") },
        "spec": { "environment": "bench", "version": format!("v{i}"), "services": services,
                  "migration": { "image": format!("example.test/m:{i}") } }
    }))
    .unwrap()
}

#[tokio::main]
async fn main() {
    let client = client_with_crds().await;
    let version = client
        .apiserver_version()
        .await
        .map(|v| v.git_version)
        .unwrap_or_default();
    eprintln!(
        "bench-release: {RELEASES} Releases x {SERVICES} services against Kubernetes {version}"
    );

    let base_ns = TestNamespace::new(&client, "bench-base").await;
    let t_base = baseline(&client, &base_ns.name).await;
    eprintln!("baseline (Jobs then Deployments created directly): {t_base:.1}s");
    let name = base_ns.name.clone();
    drop(base_ns);
    let nss: Api<Namespace> = Api::all(client.clone());
    wait_until(
        "the baseline namespace to go",
        Duration::from_secs(300),
        async || nss.get_opt(&name).await.unwrap().is_none(),
    )
    .await;

    let ns = TestNamespace::new(&client, "bench-op").await;
    let op = Operator::start(&["--namespace", &ns.name]);
    wait_until(
        "the operator to be ready",
        Duration::from_secs(60),
        async || matches!(http_get(op.admin, "/ready").await, Some((200, _))),
    )
    .await;
    let envs: Api<Environment> = Api::namespaced(client.clone(), &ns.name);
    let env: Environment = serde_json::from_value(json!({
        "apiVersion": "slipway.dev/v1alpha1", "kind": "Environment", "metadata": { "name": "bench" },
        "spec": { "platform": { "kubernetes": {} } }
    }))
    .unwrap();
    envs.create(&PostParams::default(), &env).await.unwrap();
    let rels: Api<Release> = Api::namespaced(client.clone(), &ns.name);
    let t0 = Instant::now();
    stream::iter(0..RELEASES)
        .for_each_concurrent(CONCURRENCY, |i| {
            let rels = rels.clone();
            async move {
                rels.create(&PostParams::default(), &release(i))
                    .await
                    .unwrap();
            }
        })
        .await;
    wait_until("all Releases Ready", Duration::from_secs(900), async || {
        let l = rels.list(&ListParams::default()).await.unwrap();
        l.items
            .iter()
            .filter(|r| {
                r.status.as_ref().is_some_and(|s| {
                    s.observed_generation == r.metadata.generation
                        && slipway::api::find_condition(&s.conditions, "Ready")
                            .is_some_and(|c| c.status == "True")
                })
            })
            .count()
            == RELEASES
    })
    .await;
    let t_op = t0.elapsed().as_secs_f64();
    let (rss_mib, cpu_s) = proc_stats(op.child.id());

    // 200 no-op reconciles: touch an annotation on every converged Release.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let writes_before = op.metric("slipway_api_requests_total{", &WRITES).await;
    let reconciles_before = op
        .metric("slipway_reconciliations_total{kind=\"Release\"}", &[])
        .await;
    stream::iter(0..RELEASES)
        .for_each_concurrent(CONCURRENCY, |i| {
            let rels = rels.clone();
            async move {
                let patch = json!({"metadata": {"annotations": {"bench/touch": "1"}}});
                rels.patch(
                    &format!("app{i}"),
                    &PatchParams::default(),
                    &Patch::Merge(patch),
                )
                .await
                .unwrap();
            }
        })
        .await;
    wait_until("200 reconciles", Duration::from_secs(120), async || {
        op.metric("slipway_reconciliations_total{kind=\"Release\"}", &[])
            .await
            >= reconciles_before + RELEASES as u64
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let noop_writes = op.metric("slipway_api_requests_total{", &WRITES).await - writes_before;
    let (rss_mib_end, cpu_s_end) = proc_stats(op.child.id());

    println!("| figure | value |");
    println!("| --- | --- |");
    println!("| Releases ({SERVICES} services + a migration each) | {RELEASES} |");
    println!("| seconds until all Ready (operator) | {t_op:.1} |");
    println!("| seconds, same Jobs and Deployments created directly (baseline) | {t_base:.1} |");
    println!("| ratio operator / baseline | {:.2} |", t_op / t_base);
    println!(
        "| operator peak RSS (MiB) | {:.1} (after the no-op round: {rss_mib_end:.1}) |",
        rss_mib
    );
    println!("| operator CPU seconds until all Ready | {cpu_s:.1} (after the no-op round: {cpu_s_end:.1}) |");
    println!("| write requests during {RELEASES} no-op reconciles | {noop_writes} |");
    let (_, body) = http_get(op.admin, "/metrics").await.unwrap_or_default();
    let mut requests: Vec<(u64, String)> = body
        .lines()
        .filter(|l| l.starts_with("slipway_api_requests_total{"))
        .filter_map(|l| {
            let (labels, n) = l.rsplit_once(' ')?;
            Some((
                n.parse().ok()?,
                labels
                    .trim_start_matches("slipway_api_requests_total")
                    .to_string(),
            ))
        })
        .collect();
    requests.sort_by(|a, b| b.cmp(a));
    let total: u64 = requests.iter().map(|r| r.0).sum();
    println!();
    println!(
        "API requests by the operator during the whole run: {total} ({:.1} per Release)",
        total as f64 / RELEASES as f64
    );
    println!();
    println!("| requests | verb and resource |");
    println!("| --- | --- |");
    for (n, labels) in requests.iter().take(15) {
        println!("| {n} | `{labels}` |");
    }
    let _ = DeleteParams::default();
}
