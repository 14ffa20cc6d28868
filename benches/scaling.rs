//! `make bench-scaling`: 1000 ScaledWorkers polling one Redis every 5 s.
//!
//! Prints the operator's CPU use (% of one core) while all 1000 poll an idle queue, its peak
//! RSS, the connections it holds open to Redis, and the p50/p99 delay from a queue change to
//! the scale write (measured by watching the Deployments' spec.replicas). Figures, not
//! assertions.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use futures::stream::{self, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::PostParams;
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use serde_json::json;
use slipway::api::ScaledWorker;

const WORKERS: usize = 1000;
const SAMPLED: usize = 100;
const POLL_SECONDS: u64 = 5;

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli (Debian redis-tools) must be installed: hack/deps installs it");
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let client = client_with_crds().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut redis = std::process::Command::new("redis-server")
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server (Debian redis-server) must be installed: hack/deps installs it");
    for _ in 0..50 {
        if redis_cli(port, &["ping"]).contains("PONG") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ns = TestNamespace::new(&client, "bench-scale").await;
    eprintln!("bench-scaling: {WORKERS} ScaledWorkers, pollingIntervalSeconds {POLL_SECONDS}, one Redis on port {port}");
    let deps: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let sws: Api<ScaledWorker> = Api::namespaced(client.clone(), &ns.name);
    stream::iter(0..WORKERS)
        .for_each_concurrent(50, |i| {
            let (deps, sws) = (deps.clone(), sws.clone());
            async move {
                let name = format!("w{i}");
                let d: Deployment = serde_json::from_value(json!({
                    "metadata": { "name": name },
                    "spec": { "replicas": 0, "selector": { "matchLabels": { "app": name } },
                        "template": { "metadata": { "labels": { "app": name } },
                            "spec": { "containers": [ { "name": "w", "image": "example.test/worker:1" } ] } } }
                }))
                .unwrap();
                deps.create(&PostParams::default(), &d).await.unwrap();
                let sw: ScaledWorker = serde_json::from_value(json!({
                    "apiVersion": "slipway.dev/v1alpha1", "kind": "ScaledWorker", "metadata": { "name": name },
                    "spec": { "target": { "deployment": { "name": name } }, "minReplicas": 0, "maxReplicas": 5,
                              "pollingIntervalSeconds": POLL_SECONDS, "cooldownSeconds": 300,
                              "triggers": [ { "name": "q", "targetPerReplica": 10,
                                              "redis": { "address": format!("redis://127.0.0.1:{port}"), "list": format!("q{i}") } } ] }
                }))
                .unwrap();
                sws.create(&PostParams::default(), &sw).await.unwrap();
            }
        })
        .await;

    let op = Operator::start(&["--namespace", &ns.name]);
    eventually(
        "the operator to be ready",
        Duration::from_secs(60),
        || async { matches!(http_get(op.admin, "/ready").await, Some((200, _))).then_some(()) },
    )
    .await;
    // Let every worker be observed once, then measure a quiet minute of polling.
    eventually(
        "every ScaledWorker observed",
        Duration::from_secs(300),
        || async {
            let l = sws.list(&Default::default()).await.ok()?;
            (l.items
                .iter()
                .filter(|s| {
                    s.status
                        .as_ref()
                        .and_then(|s| s.observed_generation)
                        .is_some()
                })
                .count()
                == WORKERS)
                .then_some(())
        },
    )
    .await;
    let (_, cpu0) = proc_stats(op.child.id());
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let (_, cpu1) = proc_stats(op.child.id());
    let cpu_pct = (cpu1 - cpu0) / t0.elapsed().as_secs_f64() * 100.0;
    let clients: i64 = redis_cli(port, &["info", "clients"])
        .lines()
        .find_map(|l| {
            l.strip_prefix("connected_clients:")
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(-1);

    // Latency: push 10 items to SAMPLED queues, spread over time, and watch for replicas 0 -> 1.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let watch = tokio::spawn({
        let deps = deps.clone();
        async move {
            let mut s = std::pin::pin!(watcher(deps, watcher::Config::default()).applied_objects());
            while let Some(Ok(d)) = s.next().await {
                if d.spec.and_then(|s| s.replicas).unwrap_or(0) > 0 {
                    let _ = tx.send((d.metadata.name.unwrap_or_default(), Instant::now()));
                }
            }
        }
    });
    let mut pushed: HashMap<String, Instant> = HashMap::new();
    for i in 0..SAMPLED {
        let w = i * (WORKERS / SAMPLED);
        let items: Vec<String> = (0..10).map(|n| n.to_string()).collect();
        let mut args = vec!["rpush".to_string(), format!("q{w}")];
        args.extend(items);
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        redis_cli(port, &a);
        pushed.insert(format!("w{w}"), Instant::now());
        tokio::time::sleep(Duration::from_millis(53)).await;
    }
    let mut delays = vec![];
    let deadline = Instant::now() + Duration::from_secs(POLL_SECONDS * 6);
    while delays.len() < SAMPLED && Instant::now() < deadline {
        if let Ok(Some((name, at))) = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await
        {
            if let Some(t) = pushed.remove(&name) {
                delays.push(at.duration_since(t).as_secs_f64());
            }
        }
    }
    watch.abort();
    delays.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (rss, _) = proc_stats(op.child.id());

    println!("| figure | value |");
    println!("| --- | --- |");
    println!("| ScaledWorkers (one Redis list each, pollingIntervalSeconds {POLL_SECONDS}) | {WORKERS} |");
    println!("| operator CPU while all poll (% of one core, 60 s) | {cpu_pct:.1} |");
    println!("| operator peak RSS (MiB) | {rss:.1} |");
    println!("| connections open to Redis (all clients, incl. none of the bench's) | {clients} |");
    println!(
        "| queue change -> scale write, p50 (s), {} of {SAMPLED} sampled | {:.2} |",
        delays.len(),
        percentile(&delays, 0.5)
    );
    println!(
        "| queue change -> scale write, p99 (s) | {:.2} |",
        percentile(&delays, 0.99)
    );
    drop(op);
    let _ = redis.kill();
    let _ = redis.wait();
}
