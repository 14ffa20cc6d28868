//! `make bench-scaling`: 1000 ScaledWorkers polling one Redis every 5 s.
//!
//! Prints the operator's CPU use (% of one core) while all 1000 poll an idle queue, its peak
//! RSS, the connections it holds open to Redis, and the p50/p99 delay from a queue change to
//! the scale write (measured by watching the Deployments' spec.replicas). Figures, not
//! assertions.
//!
//! `SLIPWAY_BENCH_ENGINE=keda` (`make bench-scaling-keda`, hack/keda-bench) runs the same
//! scenario with KEDA instead: the same 1000 Deployments get ScaledObjects (redis trigger on
//! the same lists, listLength 10 = targetPerReplica, activationListLength 0, pollingInterval 5,
//! min 0, max 5, cooldownPeriod 300), and the bench starts keda-operator and keda-adapter from
//! `KEDA_BIN` (hack/keda-build) as processes with the test kubeconfig, watching only the bench
//! namespace like `slipway run --namespace`. hack/keda-bench prepares what they need: the
//! certificates of their gRPC link (`KEDA_CERT_DIR`), the KEDA CRDs, and the APIService for
//! external.metrics.k8s.io routed to the adapter's address (`KEDA_ADAPTER_ADDR`).
//!
//! `SLIPWAY_BENCH_COMPARE=1` (set by hack/keda-bench for both engines) first waits for the
//! Deployment and ReplicaSet controllers to catch up with the new Deployments (so the idle
//! minute measures polling, not setup), and adds: the CPU of kube-apiserver and
//! kube-controller-manager during the idle minute (pids from `TESTENV_STATE`), the API requests
//! all clients made in that minute (`apiserver_request_total`), the seconds until all workers
//! were observed, the HPAs in the namespace, and a second latency round: 40 more items on each
//! list that reached 1 replica (50 = 5 replicas), timed until spec.replicas > 1. KEDA makes that
//! write through the HPA controller (15 s sync) reading the adapter, not its own polling.
//! `SLIPWAY_BENCH_OUT=<file>` also writes the figures as `key<TAB>label<TAB>value` lines.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use futures::stream::{self, StreamExt};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use serde_json::json;
use slipway::api::ScaledWorker;

const WORKERS: usize = 1000;
const SAMPLED: usize = 100;
const POLL_SECONDS: u64 = 5;
/// Items per list in the first latency round: one replica's worth (targetPerReplica 10).
const ITEMS: usize = 10;
/// Items added in the scale-out round: 50 in all, 5 replicas (maxReplicas).
const MORE_ITEMS: usize = 40;

#[derive(Clone, Copy, PartialEq)]
enum Engine {
    Slipway,
    Keda,
}

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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn env_required(name: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| {
            panic!("{name} is not set: run the KEDA side with hack/keda-bench (make bench-scaling-keda)")
        })
}

/// A process of the engine under test (KEDA's operator or adapter), killed when dropped.
struct Process {
    child: std::process::Child,
    log: PathBuf,
}

impl Process {
    fn spawn(name: &str, cmd: &mut std::process::Command) -> Process {
        let log =
            std::env::temp_dir().join(format!("slipway-bench-{name}-{}.log", random_suffix()));
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        eprintln!(
            "bench-scaling: started {name} (pid {}, log {})",
            child.id(),
            log.display()
        );
        Process { child, log }
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// keda-operator and keda-adapter, both watching `namespace` only.
fn start_keda(namespace: &str) -> (Process, Process, std::net::SocketAddr) {
    let bin = PathBuf::from(env_required("KEDA_BIN"));
    let certs = env_required("KEDA_CERT_DIR");
    let adapter: std::net::SocketAddr = env_required("KEDA_ADAPTER_ADDR")
        .parse()
        .expect("KEDA_ADAPTER_ADDR is ip:port");
    let kubeconfig = kubeconfig_path();
    let (grpc, probe, metrics, adapter_metrics) =
        (free_port(), free_port(), free_port(), free_port());
    let env = [
        ("KUBECONFIG", kubeconfig.to_string_lossy().into_owned()),
        ("WATCH_NAMESPACE", namespace.to_string()),
        ("POD_NAMESPACE", "keda".to_string()),
        ("KEDA_CLUSTER_OBJECT_NAMESPACE", "keda".to_string()),
    ];
    let operator = Process::spawn(
        "keda-operator",
        std::process::Command::new(bin.join("keda"))
            .args([
                &format!("--metrics-bind-address=127.0.0.1:{metrics}"),
                &format!("--health-probe-bind-address=127.0.0.1:{probe}"),
                &format!("--metrics-service-bind-address=127.0.0.1:{grpc}"),
                &format!("--cert-dir={certs}"),
                "--enable-cert-rotation=false",
            ])
            .envs(env.clone()),
    );
    let k = kubeconfig.to_string_lossy();
    let adapter_proc = Process::spawn(
        "keda-adapter",
        std::process::Command::new(bin.join("keda-adapter"))
            .args([
                &format!("--bind-address={}", adapter.ip()),
                &format!("--secure-port={}", adapter.port()),
                &format!("--cert-dir={certs}"),
                &format!("--tls-cert-file={certs}/tls.crt"),
                &format!("--tls-private-key-file={certs}/tls.key"),
                &format!("--lister-kubeconfig={k}"),
                &format!("--authentication-kubeconfig={k}"),
                &format!("--authorization-kubeconfig={k}"),
                &format!("--metrics-service-address=127.0.0.1:{grpc}"),
                &format!("--port={adapter_metrics}"),
            ])
            .envs(env),
    );
    let probe_addr: std::net::SocketAddr = format!("127.0.0.1:{probe}").parse().unwrap();
    (operator, adapter_proc, probe_addr)
}

fn scaled_object_api(client: &Client, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "keda.sh",
        "v1alpha1",
        "ScaledObject",
    ));
    Api::namespaced_with(client.clone(), ns, &ar)
}

fn condition_true(obj: &serde_json::Value, kind: &str) -> bool {
    obj["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == kind && c["status"] == "True")
    })
}

/// CPU seconds of the control-plane component `name` of the local plane (hack/bench and
/// hack/keda-bench export TESTENV_STATE), or None.
fn component_pid(name: &str) -> Option<u32> {
    let state = std::env::var("TESTENV_STATE").ok()?;
    std::fs::read_to_string(format!("{state}/pids/{name}.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// kube-apiserver's `apiserver_request_total` per "VERB resource[/subresource]".
async fn apiserver_requests(client: &Client) -> HashMap<String, f64> {
    let req = http::Request::get("/metrics").body(vec![]).unwrap();
    let text = client.request_text(req).await.unwrap_or_default();
    let label = |l: &str, k: &str| -> String {
        l.split(&format!("{k}=\"")[..])
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("")
            .to_string()
    };
    let mut counts = HashMap::new();
    for l in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let v: f64 = l
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let (res, sub) = (label(l, "resource"), label(l, "subresource"));
        let res = if sub.is_empty() {
            res
        } else {
            format!("{res}/{sub}")
        };
        *counts
            .entry(format!("{} {res}", label(l, "verb")))
            .or_insert(0.0) += v;
    }
    counts
}

fn is_write(key: &str) -> bool {
    ["POST ", "PUT ", "PATCH ", "DELETE ", "APPLY "]
        .iter()
        .any(|v| key.starts_with(v))
}

/// The three largest counts as "VERB resource N, ...".
fn top3<'a>(counts: impl Iterator<Item = &'a (String, f64)>) -> String {
    let top: Vec<String> = counts.take(3).map(|(k, d)| format!("{k} {d:.0}")).collect();
    if top.is_empty() {
        "none".into()
    } else {
        top.join(", ")
    }
}

/// Waits until the Deployment and ReplicaSet controllers have caught up with the 1000 new
/// Deployments, so their work is not counted in the idle minute.
async fn control_plane_settled(client: &Client, ns: &str) {
    let deps: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let (d, r) = (
            deps.list(&Default::default()).await,
            rss.list(&Default::default()).await,
        );
        if let (Ok(d), Ok(r)) = (d, r) {
            let d_ok = d.items.iter().all(|d| {
                d.status.as_ref().and_then(|s| s.observed_generation) >= d.metadata.generation
            });
            let r_ok = r.items.len() >= WORKERS
                && r.items.iter().all(|r| {
                    r.status.as_ref().and_then(|s| s.observed_generation) >= r.metadata.generation
                });
            if d_ok && r_ok {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the Deployment and ReplicaSet controllers did not catch up within 600 s"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Pushes `items` onto the lists of `workers`, 53 ms apart, then collects for each worker the
/// delay until the watch reports spec.replicas > `above`.
async fn latency_round(
    deps: &Api<Deployment>,
    port: u16,
    workers: &[usize],
    items: usize,
    above: i32,
    timeout: Duration,
) -> (Vec<f64>, Vec<usize>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let watch = tokio::spawn({
        let deps = deps.clone();
        async move {
            let mut s = std::pin::pin!(watcher(deps, watcher::Config::default()).applied_objects());
            while let Some(Ok(d)) = s.next().await {
                if d.spec.and_then(|s| s.replicas).unwrap_or(0) > above {
                    let _ = tx.send((d.metadata.name.unwrap_or_default(), Instant::now()));
                }
            }
        }
    });
    let mut pushed: HashMap<String, (usize, Instant)> = HashMap::new();
    for &w in workers {
        let mut args = vec!["rpush".to_string(), format!("q{w}")];
        args.extend((0..items).map(|n| n.to_string()));
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        redis_cli(port, &a);
        pushed.insert(format!("w{w}"), (w, Instant::now()));
        tokio::time::sleep(Duration::from_millis(53)).await;
    }
    let mut delays = vec![];
    let mut reached = vec![];
    let deadline = Instant::now() + timeout;
    while delays.len() < workers.len() && Instant::now() < deadline {
        if let Ok(Some((name, at))) = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await
        {
            if let Some((w, t)) = pushed.remove(&name) {
                delays.push(at.duration_since(t).as_secs_f64());
                reached.push(w);
            }
        }
    }
    watch.abort();
    delays.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (delays, reached)
}

/// Figures printed as a Markdown table and, with SLIPWAY_BENCH_OUT, kept as TSV.
#[derive(Default)]
struct Figures(Vec<(String, String, String)>);

impl Figures {
    fn row(&mut self, key: &str, label: &str, value: String) {
        self.row2(key, label, value.clone(), label, value);
    }

    /// A row whose TSV form differs (an engine-neutral label, the sample count in the value).
    fn row2(&mut self, key: &str, label: &str, value: String, tsv_label: &str, tsv_value: String) {
        println!("| {label} | {value} |");
        self.0.push((key.into(), tsv_label.into(), tsv_value));
    }
}

#[tokio::main]
async fn main() {
    let engine = match std::env::var("SLIPWAY_BENCH_ENGINE").as_deref() {
        Ok("keda") => Engine::Keda,
        Ok("slipway" | "") | Err(_) => Engine::Slipway,
        Ok(other) => panic!("SLIPWAY_BENCH_ENGINE={other}: expected slipway or keda"),
    };
    let compare = std::env::var("SLIPWAY_BENCH_COMPARE").is_ok_and(|v| v == "1");
    let client = client_with_crds().await;
    let port = free_port();
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
    let kind = match engine {
        Engine::Slipway => "ScaledWorkers",
        Engine::Keda => "KEDA ScaledObjects",
    };
    eprintln!("bench-scaling: {WORKERS} {kind}, pollingIntervalSeconds {POLL_SECONDS}, one Redis on port {port}");
    let deps: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let sws: Api<ScaledWorker> = Api::namespaced(client.clone(), &ns.name);
    let sos = scaled_object_api(&client, &ns.name);
    stream::iter(0..WORKERS)
        .for_each_concurrent(50, |i| {
            let (deps, sws, sos) = (deps.clone(), sws.clone(), sos.clone());
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
                match engine {
                    Engine::Slipway => {
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
                    Engine::Keda => {
                        // The same scaling rule in KEDA's terms: listLength is the target per
                        // replica, activationListLength 0 activates on the first item.
                        let so: DynamicObject = serde_json::from_value(json!({
                            "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": { "name": name },
                            "spec": { "scaleTargetRef": { "name": name }, "minReplicaCount": 0, "maxReplicaCount": 5,
                                      "pollingInterval": POLL_SECONDS, "cooldownPeriod": 300,
                                      "triggers": [ { "type": "redis", "name": "q", "metadata": {
                                          "address": format!("127.0.0.1:{port}"), "listName": format!("q{i}"),
                                          "listLength": "10", "activationListLength": "0" } } ] }
                        }))
                        .unwrap();
                        sos.create(&PostParams::default(), &so).await.unwrap();
                    }
                }
            }
        })
        .await;

    let started = Instant::now();
    // The measured processes: the operator first, then (KEDA) the metrics adapter.
    let (op, mut keda) = match engine {
        Engine::Slipway => {
            let op = Operator::start(&["--namespace", &ns.name]);
            eventually(
                "the operator to be ready",
                Duration::from_secs(60),
                || async {
                    matches!(http_get(op.admin, "/ready").await, Some((200, _))).then_some(())
                },
            )
            .await;
            (Some(op), None)
        }
        Engine::Keda => {
            let (operator, adapter, probe) = start_keda(&ns.name);
            eventually(
                "keda-operator to be ready (/readyz)",
                Duration::from_secs(120),
                || async {
                    matches!(http_get(probe, "/readyz").await, Some((200, _))).then_some(())
                },
            )
            .await;
            (None, Some((operator, adapter)))
        }
    };
    let pids: Vec<u32> = match (&op, &keda) {
        (Some(op), _) => vec![op.child.id()],
        (_, Some((o, a))) => vec![o.child.id(), a.child.id()],
        _ => unreachable!(),
    };
    // Let every worker be observed once, then measure a quiet minute of polling.
    match engine {
        Engine::Slipway => {
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
        }
        Engine::Keda => {
            let (o, a) = keda.as_mut().unwrap();
            let deadline = Instant::now() + Duration::from_secs(1200);
            let mut last = usize::MAX;
            loop {
                assert!(
                    o.alive() && a.alive(),
                    "a KEDA process exited; see {} and {}",
                    o.log.display(),
                    a.log.display()
                );
                let ready = sos
                    .list(&Default::default())
                    .await
                    .map(|l| {
                        l.items
                            .iter()
                            .filter(|s| condition_true(&s.data, "Ready"))
                            .count()
                    })
                    .unwrap_or(0);
                if ready / 100 != last / 100 {
                    eprintln!(
                        "bench-scaling: {ready} ScaledObjects Ready after {:.0} s",
                        started.elapsed().as_secs_f64()
                    );
                }
                last = ready;
                if ready == WORKERS {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "only {ready} of {WORKERS} ScaledObjects Ready (KEDA created the HPA and started polling) within 1200 s"
                );
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            eventually(
                "external.metrics.k8s.io served by keda-adapter through the aggregation layer",
                Duration::from_secs(120),
                || async {
                    let req = http::Request::get("/apis/external.metrics.k8s.io/v1beta1")
                        .body(vec![])
                        .unwrap();
                    client.request_text(req).await.ok().map(|_| ())
                },
            )
            .await;
        }
    }
    let startup = started.elapsed().as_secs_f64();
    eprintln!(
        "bench-scaling: all {WORKERS} observed {startup:.1} s after the start; measuring 60 s of idle polling"
    );
    if compare {
        control_plane_settled(&client, &ns.name).await;
        eprintln!(
            "bench-scaling: Deployment and ReplicaSet controllers settled {:.1} s after the start",
            started.elapsed().as_secs_f64()
        );
    }
    let requests0 = if compare {
        Some(apiserver_requests(&client).await)
    } else {
        None
    };
    let plane: Vec<(&str, Option<u32>)> = ["kube-apiserver", "kube-controller-manager"]
        .into_iter()
        .map(|n| (n, if compare { component_pid(n) } else { None }))
        .collect();
    let cpu0: Vec<f64> = pids.iter().map(|&p| proc_stats(p).1).collect();
    let plane0: Vec<f64> = plane
        .iter()
        .map(|(_, p)| p.map_or(0.0, |p| proc_stats(p).1))
        .collect();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let secs = t0.elapsed().as_secs_f64();
    let cpu_pct: Vec<f64> = pids
        .iter()
        .zip(&cpu0)
        .map(|(&p, c0)| (proc_stats(p).1 - c0) / secs * 100.0)
        .collect();
    let plane_pct: Vec<Option<f64>> = plane
        .iter()
        .zip(&plane0)
        .map(|((_, p), c0)| p.map(|p| (proc_stats(p).1 - c0) / secs * 100.0))
        .collect();
    let requests: Option<Vec<(String, f64)>> = match requests0 {
        Some(before) => {
            let mut delta: Vec<(String, f64)> = apiserver_requests(&client)
                .await
                .into_iter()
                .map(|(k, v)| {
                    let d = v - before.get(&k).copied().unwrap_or(0.0);
                    (k, d)
                })
                .filter(|(_, d)| *d > 0.0)
                .collect();
            delta.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap());
            Some(delta)
        }
        None => None,
    };
    let clients: i64 = redis_cli(port, &["info", "clients"])
        .lines()
        .find_map(|l| {
            l.strip_prefix("connected_clients:")
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(-1);

    // Latency: push 10 items to SAMPLED queues, spread over time, and watch for replicas 0 -> 1.
    let sampled: Vec<usize> = (0..SAMPLED).map(|i| i * (WORKERS / SAMPLED)).collect();
    let (delays, reached) = latency_round(
        &deps,
        port,
        &sampled,
        ITEMS,
        0,
        Duration::from_secs(POLL_SECONDS * 6),
    )
    .await;
    let rss: Vec<f64> = pids.iter().map(|&p| proc_stats(p).0).collect();
    // Scale-out: 40 more items on the lists that reached 1 replica, watch for replicas > 1.
    let scale_out = if compare {
        Some(
            latency_round(
                &deps,
                port,
                &reached,
                MORE_ITEMS,
                1,
                Duration::from_secs(120),
            )
            .await,
        )
    } else {
        None
    };

    let mut f = Figures::default();
    println!("| figure | value |");
    println!("| --- | --- |");
    match engine {
        Engine::Slipway => f.row(
            "objects",
            &format!("ScaledWorkers (one Redis list each, pollingIntervalSeconds {POLL_SECONDS})"),
            WORKERS.to_string(),
        ),
        Engine::Keda => f.row(
            "objects",
            &format!("KEDA ScaledObjects (one Redis list each, pollingInterval {POLL_SECONDS})"),
            WORKERS.to_string(),
        ),
    }
    f.row(
        "cpu",
        "operator CPU while all poll (% of one core, 60 s)",
        format!("{:.1}", cpu_pct[0]),
    );
    f.row("rss", "operator peak RSS (MiB)", format!("{:.1}", rss[0]));
    f.row(
        "redis_clients",
        "connections open to Redis (all clients, incl. none of the bench's)",
        clients.to_string(),
    );
    let p50 = format!("{:.2}", percentile(&delays, 0.5));
    f.row2(
        "p50",
        &format!(
            "queue change -> scale write, p50 (s), {} of {SAMPLED} sampled",
            delays.len()
        ),
        p50.clone(),
        "queue change -> scale write (0 -> 1 replica), p50 (s)",
        format!("{p50} ({} of {SAMPLED} sampled)", delays.len()),
    );
    let p99 = format!("{:.2}", percentile(&delays, 0.99));
    f.row2(
        "p99",
        "queue change -> scale write, p99 (s)",
        p99.clone(),
        "queue change -> scale write (0 -> 1 replica), p99 (s)",
        p99,
    );
    if engine == Engine::Keda {
        f.row(
            "adapter_cpu",
            "metrics adapter CPU while all poll (% of one core, 60 s)",
            format!("{:.1}", cpu_pct[1]),
        );
        f.row(
            "adapter_rss",
            "metrics adapter peak RSS (MiB)",
            format!("{:.1}", rss[1]),
        );
    }
    if compare {
        for ((name, _), pct) in plane.iter().zip(&plane_pct) {
            if let Some(pct) = pct {
                f.row(
                    &format!("{name}_cpu"),
                    &format!("{name} CPU during the idle minute (% of one core)"),
                    format!("{pct:.1}"),
                );
            }
        }
        if let Some(delta) = &requests {
            // The bench's own two /metrics reads are counted too.
            let all: f64 = delta.iter().map(|(_, d)| d).sum();
            let writes: f64 = delta
                .iter()
                .filter(|(k, _)| is_write(k))
                .map(|(_, d)| d)
                .sum();
            f.row(
                "requests",
                "kube-apiserver requests during the idle minute, all clients (of them writes)",
                format!("{all:.0} ({writes:.0})"),
            );
            f.row(
                "top_requests",
                "most frequent requests during the idle minute",
                top3(delta.iter()),
            );
            f.row(
                "top_writes",
                "most frequent writes during the idle minute",
                top3(delta.iter().filter(|(k, _)| is_write(k))),
            );
        }
        f.row(
            "startup",
            "seconds from the operator's start until all are observed (KEDA: Ready, metrics API served)",
            format!("{startup:.1}"),
        );
        let hpas = Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), &ns.name)
            .list(&Default::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        // Which HPAs asked for more than one replica: with KEDA the 1 -> 5 write is theirs.
        let hpas_out = hpas
            .iter()
            .filter(|h| h.status.as_ref().is_some_and(|s| s.desired_replicas > 1))
            .count();
        f.row(
            "hpas",
            "HorizontalPodAutoscalers in the namespace (of them desiring > 1 replica at the end)",
            format!("{} ({hpas_out})", hpas.len()),
        );
        if let Some((out_delays, _)) = &scale_out {
            let p50 = format!("{:.2}", percentile(out_delays, 0.5));
            let of = format!("{} of {}", out_delays.len(), reached.len());
            f.row2(
                "out_p50",
                &format!("40 more items (1 -> 5 replicas) -> scale write, p50 (s), {of}"),
                p50.clone(),
                "40 more items (1 -> 5 replicas) -> scale write, p50 (s)",
                format!("{p50} ({of})"),
            );
            f.row(
                "out_p99",
                "40 more items (1 -> 5 replicas) -> scale write, p99 (s)",
                format!("{:.2}", percentile(out_delays, 0.99)),
            );
        }
    }
    if let Some(path) = std::env::var_os("SLIPWAY_BENCH_OUT") {
        let tsv: String =
            f.0.iter()
                .map(|(k, l, v)| format!("{k}\t{l}\t{v}\n"))
                .collect();
        std::fs::write(&path, tsv).expect("writing SLIPWAY_BENCH_OUT");
    }
    drop(op);
    drop(keda);
    let _ = redis.kill();
    let _ = redis.wait();
}
