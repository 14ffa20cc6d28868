//! `make bench-release`: 200 Releases of 3 services each, created at once against the local
//! control plane, compared with creating the same Jobs and Deployments directly (rendered by
//! the operator's own code, created with plain POSTs, waited for with watches).
//!
//! Prints: seconds until all Releases are Ready, the operator's peak RSS and CPU seconds, the
//! write requests made by 200 no-op reconciles, and the baseline and ratio. Figures, not
//! assertions: this is a benchmark, not a test.
//!
//! Both sides saturate the two cores, so a single pair of runs moves by seconds with
//! scheduling luck: the bench runs `SLIPWAY_BENCH_ROUNDS` rounds (default 5), alternating
//! which side goes first, each run on a freshly started control plane once it is idle (when
//! hack/bench started the plane; `SLIPWAY_BENCH_FRESH_PLANE`), and reports each round and
//! the medians. `SLIPWAY_OPERATOR_BIN`
//! benches another operator build (an A/B against an older commit).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures::stream::{self, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use slipway::api::{Environment, Release};
use slipway::platform::kubernetes::render;
use tokio::task::JoinHandle;

const RELEASES: usize = 200;
const SERVICES: usize = 3;
const CONCURRENCY: usize = 50;
const WRITES: [&str; 4] = [
    "verb=\"POST\"",
    "verb=\"PUT\"",
    "verb=\"PATCH\"",
    "verb=\"DELETE\"",
];

/// The migration Job and Deployments the operator renders for Release `i` (the same objects,
/// through the same rendering code), without owner references: nothing owns them here.
fn rendered(i: usize, ns: &str) -> (Job, Vec<Deployment>) {
    let mut rel = release(i);
    rel.metadata.namespace = Some(ns.to_string());
    rel.metadata.uid = Some(format!("bench-{i}"));
    rel.metadata.generation = Some(1);
    let env = environment(ns);
    let plan = slipway::release::plan::resolve(&rel, &env, &[]).expect("a valid bench Release");
    let target = render::Target {
        namespace: ns.to_string(),
        owner: rel.controller_owner_ref(&()).unwrap(),
    };
    let mut job = render::migration_job(&plan, plan.migration.as_ref().unwrap(), &target, "");
    job.metadata.owner_references = None;
    let deployments = plan
        .services
        .iter()
        .map(|svc| {
            let mut d = render::deployment(&plan, svc, &target, 600);
            d.metadata.owner_references = None;
            d
        })
        .collect();
    (job, deployments)
}

fn environment(ns: &str) -> Environment {
    serde_json::from_value(json!({
        "apiVersion": "slipway.dev/v1alpha1", "kind": "Environment",
        "metadata": { "name": "bench", "namespace": ns },
        "spec": { "platform": { "kubernetes": {} } }
    }))
    .unwrap()
}

async fn wait_until(what: &str, timeout: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates the same Jobs, then Deployments, directly; returns seconds until all are done.
async fn baseline(client: &Client, ns: &str) -> (f64, Shared, Vec<JoinHandle<()>>) {
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let deps: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let t0 = Instant::now();
    let (tl, tasks) = watch_timeline(client, ns, t0);
    // SLIPWAY_BENCH_BASELINE=burst: all 200 apps at once (every Job POSTed at the start, each
    // app's Deployments as soon as its Job succeeded), the shape the operator's work has when
    // 200 Releases arrive together. The default holds one of 50 slots per app until its
    // Deployments are created, so at most 50 migrations run at a time.
    let in_flight = if std::env::var("SLIPWAY_BENCH_BASELINE").as_deref() == Ok("burst") {
        RELEASES
    } else {
        CONCURRENCY
    };
    stream::iter(0..RELEASES)
        .for_each_concurrent(in_flight, |i| {
            let jobs = jobs.clone();
            let deps = deps.clone();
            let tl = tl.clone();
            async move {
                let (job, deployments) = rendered(i, jobs.namespace().unwrap());
                jobs.create(&PostParams::default(), &job).await.unwrap();
                // Like `kubectl wait`: the watch tells when the Job succeeded.
                let app = format!("app{i}");
                while !tl.lock().unwrap().job_succeeded.contains_key(&app) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                for d in &deployments {
                    deps.create(&PostParams::default(), d).await.unwrap();
                }
            }
        })
        .await;
    wait_until(
        "baseline Deployments available",
        Duration::from_secs(600),
        async || {
            let tl = tl.lock().unwrap();
            tl.available
                .values()
                .filter(|m| m.len() == SERVICES)
                .count()
                == RELEASES
        },
    )
    .await;
    (t0.elapsed().as_secs_f64(), tl, tasks)
}

/// When each milestone of each app was first seen by a watch, in seconds since `t0`: where the
/// time goes, for the baseline and the operator alike (both name objects "app{i}-...").
#[derive(Default)]
struct Timeline {
    job_created: HashMap<String, f64>,
    job_succeeded: HashMap<String, f64>,
    deployments_created: HashMap<String, f64>,
    available: HashMap<String, HashMap<String, f64>>,
    ready: HashMap<String, f64>,
}

fn app_of(name: &str) -> String {
    name.split('-').next().unwrap_or(name).to_string()
}

type Shared = Arc<Mutex<Timeline>>;

fn record(map: &mut HashMap<String, f64>, app: String, t: f64) {
    map.entry(app).or_insert(t);
}

/// Starts watches on Jobs, Deployments and (for the operator) Releases in `ns`.
fn watch_timeline(client: &Client, ns: &str, t0: Instant) -> (Shared, Vec<JoinHandle<()>>) {
    let tl: Shared = Arc::default();
    let mut tasks = Vec::new();
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let t = tl.clone();
    tasks.push(tokio::spawn(async move {
        let mut s = watcher(jobs, watcher::Config::default())
            .applied_objects()
            .boxed();
        while let Some(Ok(j)) = s.next().await {
            let now = t0.elapsed().as_secs_f64();
            let app = app_of(&j.name_any());
            let mut tl = t.lock().unwrap();
            record(&mut tl.job_created, app.clone(), now);
            if j.status.and_then(|s| s.succeeded).unwrap_or(0) > 0 {
                record(&mut tl.job_succeeded, app, now);
            }
        }
    }));
    let deps: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let t = tl.clone();
    tasks.push(tokio::spawn(async move {
        let mut s = watcher(deps, watcher::Config::default())
            .applied_objects()
            .boxed();
        while let Some(Ok(d)) = s.next().await {
            let now = t0.elapsed().as_secs_f64();
            let name = d.name_any();
            let app = app_of(&name);
            let mut tl = t.lock().unwrap();
            record(&mut tl.deployments_created, app.clone(), now);
            let avail = d.status.and_then(|s| s.available_replicas).unwrap_or(0) >= 1;
            if avail {
                tl.available
                    .entry(app)
                    .or_default()
                    .entry(name)
                    .or_insert(now);
            }
        }
    }));
    let rels: Api<Release> = Api::namespaced(client.clone(), ns);
    let t = tl.clone();
    tasks.push(tokio::spawn(async move {
        let mut s = watcher(rels, watcher::Config::default())
            .applied_objects()
            .boxed();
        while let Some(Ok(r)) = s.next().await {
            let ready = r.status.as_ref().is_some_and(|s| {
                s.observed_generation == r.metadata.generation
                    && slipway::api::find_condition(&s.conditions, "Ready")
                        .is_some_and(|c| c.status == "True")
            });
            if ready {
                let now = t0.elapsed().as_secs_f64();
                record(&mut t.lock().unwrap().ready, r.name_any(), now);
            }
        }
    }));
    (tl, tasks)
}

/// One line per milestone: median and last, in seconds since the first create.
fn print_timeline(label: &str, tl: &Timeline) {
    let all_available: HashMap<String, f64> = tl
        .available
        .iter()
        .filter(|(_, m)| m.len() == SERVICES)
        .map(|(app, m)| (app.clone(), m.values().cloned().fold(0.0, f64::max)))
        .collect();
    let rows: [(&str, &HashMap<String, f64>); 5] = [
        ("migration Job created", &tl.job_created),
        ("migration Job succeeded", &tl.job_succeeded),
        ("first Deployment created", &tl.deployments_created),
        ("all 3 Deployments available", &all_available),
        ("Release Ready", &tl.ready),
    ];
    for (what, m) in rows {
        if m.is_empty() {
            continue;
        }
        let mut v: Vec<f64> = m.values().cloned().collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "| {label}: {what} | {:.1} | {:.1} | {} |",
            v[v.len() / 2],
            v[v.len() - 1],
            v.len()
        );
    }
}

/// CPU seconds used so far by each control-plane process of this plane (matched by the state
/// directory on its command line when `TESTENV_STATE` is set), by component name.
fn control_plane_cpu() -> Vec<(String, f64)> {
    const NAMES: [&str; 5] = [
        "kube-apiserver",
        "etcd",
        "kube-controller",
        "kube-scheduler",
        "kwok",
    ];
    let mut out: Vec<(String, f64)> = NAMES.iter().map(|n| (n.to_string(), 0.0)).collect();
    for (pid, comm) in plane_processes() {
        if let Some(slot) = out.iter_mut().find(|(n, _)| comm.starts_with(n.as_str())) {
            slot.1 += proc_stats(pid).1;
        }
    }
    out
}

/// Processes of this control plane (those whose command line names `TESTENV_STATE`, when it
/// is set): pid and command name.
fn plane_processes() -> Vec<(u32, String)> {
    let state = std::env::var("TESTENV_STATE").unwrap_or_default();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if state.is_empty() || cmdline.contains(&state) {
            out.push((pid, comm.trim().to_string()));
        }
    }
    out
}

fn cpu_delta(before: &[(String, f64)], after: &[(String, f64)]) -> String {
    let parts: Vec<String> = after
        .iter()
        .zip(before)
        .map(|((n, a), (_, b))| format!("{n} {:.1}", a - b))
        .collect();
    format!(
        "{:.1} ({})",
        cpu_sum(after) - cpu_sum(before),
        parts.join(", ")
    )
}

/// CPU seconds of all the processes in a [`control_plane_cpu`] reading.
fn cpu_sum(v: &[(String, f64)]) -> f64 {
    v.iter().map(|x| x.1).sum()
}

/// With `SLIPWAY_BENCH_PPROF=<dir>`, records a 20 s CPU profile of the API server into
/// `<dir>/<label>.pprof` (read it with `go tool pprof -top`), to see what the load costs.
fn profile_apiserver(label: &str) -> Option<std::process::Child> {
    let dir = std::env::var("SLIPWAY_BENCH_PPROF").ok()?;
    std::fs::create_dir_all(&dir).ok()?;
    let out = std::fs::File::create(format!("{dir}/{label}.pprof")).ok()?;
    std::process::Command::new("kubectl")
        .args(["get", "--raw", "/debug/pprof/profile?seconds=20"])
        .stdout(out)
        .spawn()
        .map_err(|e| eprintln!("cannot profile the API server: kubectl: {e}"))
        .ok()
}

/// The API server's own request counters (`apiserver_request_total`), summed by verb,
/// resource and subresource, plus watch events sent by kind: everything the control plane
/// served, whoever asked.
async fn apiserver_requests(client: &Client) -> HashMap<String, f64> {
    let req = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("a GET request");
    let text = client.request_text(req).await.unwrap_or_default();
    let mut out: HashMap<String, f64> = HashMap::new();
    for line in text.lines() {
        let (metric, rest) = match line.split_once('{') {
            Some(x) => x,
            None => continue,
        };
        if metric != "apiserver_request_total" && metric != "apiserver_watch_events_total" {
            continue;
        }
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let get = |k: &str| {
            labels
                .split("\",")
                .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
                .unwrap_or_default()
        };
        let key = if metric == "apiserver_watch_events_total" {
            format!("watch events {}", get("kind"))
        } else {
            let sub = get("subresource");
            format!(
                "{} {}{}",
                get("verb"),
                get("resource"),
                if sub.is_empty() {
                    String::new()
                } else {
                    format!("/{sub}")
                }
            )
        };
        *out.entry(key).or_default() += value.trim().parse::<f64>().unwrap_or(0.0);
    }
    out
}

fn requests_delta(
    before: &HashMap<String, f64>,
    after: &HashMap<String, f64>,
) -> HashMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v >= 1.0)
        .collect()
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

/// Waits until the control plane is quiet (under a tenth of a core over two seconds, e.g.
/// the garbage collector done with the last run's namespace), at most 90 s, so each run
/// starts from the same idle state.
async fn settle(label: &str) {
    let start = Instant::now();
    loop {
        let before = cpu_sum(&control_plane_cpu());
        tokio::time::sleep(Duration::from_secs(2)).await;
        let used = cpu_sum(&control_plane_cpu()) - before;
        if used < 0.2 || start.elapsed() > Duration::from_secs(90) {
            eprintln!(
                "{label}: control plane quiet after {:.0}s ({used:.2} CPU s in the last 2 s); kube-apiserver RSS {:.0} MiB",
                start.elapsed().as_secs_f64(),
                apiserver_rss_mib()
            );
            return;
        }
    }
}

fn fresh_planes() -> bool {
    std::env::var("SLIPWAY_BENCH_FRESH_PLANE").as_deref() == Ok("1")
}

/// With `SLIPWAY_BENCH_FRESH_PLANE=1` (hack/bench sets it when it started the local control
/// plane itself), every timed run gets a newly started plane: the API server's memory grows
/// with each run's created and deleted objects (259 MiB before the first run, 1.2 GiB before
/// the fourth), and a later run pays for the garbage collection of an earlier one. Returns a
/// client of the plane to use.
async fn fresh_plane(client: Client, label: &str) -> Client {
    if !fresh_planes() {
        return client;
    }
    drop(client);
    let testenv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testenv");
    let down = std::process::Command::new(testenv.join("down"))
        .status()
        .expect("running tests/testenv/down");
    assert!(down.success(), "tests/testenv/down failed");
    let up = std::process::Command::new(testenv.join("up"))
        .output()
        .expect("running tests/testenv/up");
    assert!(
        up.status.success(),
        "tests/testenv/up failed:\n{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let path = String::from_utf8_lossy(&up.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        std::path::PathBuf::from(&path),
        kubeconfig_path(),
        "the restarted plane's kubeconfig moved"
    );
    eprintln!("{label}: started a fresh control plane");
    client_with_crds().await
}

/// Resident memory of this plane's kube-apiserver.
fn apiserver_rss_mib() -> f64 {
    plane_processes()
        .into_iter()
        .find(|(_, comm)| comm == "kube-apiserver")
        .map_or(0.0, |(pid, _)| proc_memory_mib(pid, "VmRSS"))
}

/// Control-plane CPU, API server request counters and (optionally) a profile over one run.
struct Measure {
    cpu0: Vec<(String, f64)>,
    steal0: f64,
    req0: HashMap<String, f64>,
    prof: Option<std::process::Child>,
}

impl Measure {
    async fn start(client: &Client, label: &str) -> Measure {
        Measure {
            cpu0: control_plane_cpu(),
            steal0: steal_seconds(),
            req0: apiserver_requests(client).await,
            prof: profile_apiserver(label),
        }
    }

    /// The run that took `secs`: control-plane CPU and requests since start, and the
    /// milestones its watches saw (stopped here).
    async fn finish(
        mut self,
        client: &Client,
        secs: f64,
        tl: Shared,
        tasks: Vec<JoinHandle<()>>,
    ) -> Run {
        let cpu1 = control_plane_cpu();
        let steal_s = steal_seconds() - self.steal0;
        let cpu_total = cpu_sum(&cpu1) - cpu_sum(&self.cpu0);
        let control_plane_cpu = cpu_delta(&self.cpu0, &cpu1);
        let requests = requests_delta(&self.req0, &apiserver_requests(client).await);
        if let Some(p) = self.prof.as_mut() {
            let _ = p.wait();
        }
        Run {
            secs,
            timeline: finish_timeline(tl, tasks).await,
            control_plane_cpu,
            cpu_total,
            steal_s,
            requests,
        }
    }
}

/// CPU time the hypervisor gave to others while this machine's CPUs wanted it ("steal" in
/// /proc/stat), in seconds summed over CPUs: when it grows, every process here ran slower.
fn steal_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: f64 = stat
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(8))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    // USER_HZ is 100 on Linux.
    ticks / 100.0
}

/// What one timed run (baseline or operator) measured.
struct Run {
    secs: f64,
    timeline: Timeline,
    control_plane_cpu: String,
    /// Control-plane CPU seconds in all.
    cpu_total: f64,
    /// CPU seconds stolen by the hypervisor during the run.
    steal_s: f64,
    requests: HashMap<String, f64>,
}

/// What only the operator run measures.
struct OperatorFigures {
    rss_mib: f64,
    cpu_s: f64,
    rss_mib_end: f64,
    cpu_s_end: f64,
    noop_writes: u64,
    events_by_reason: std::collections::BTreeMap<String, usize>,
    operator_requests: Vec<(u64, String)>,
}

/// Deletes a namespace and waits until it is gone, so the next run starts on a quiet plane.
/// With a fresh plane for every run there is nothing to wait for: the plane goes next.
async fn remove_namespace(client: &Client, ns: TestNamespace) {
    let name = ns.name.clone();
    drop(ns);
    if fresh_planes() {
        return;
    }
    let nss: Api<Namespace> = Api::all(client.clone());
    wait_until(
        "the namespace to go",
        Duration::from_secs(300),
        async || nss.get_opt(&name).await.unwrap().is_none(),
    )
    .await;
}

async fn finish_timeline(tl: Shared, tasks: Vec<JoinHandle<()>>) -> Timeline {
    tokio::time::sleep(Duration::from_secs(1)).await;
    tasks.iter().for_each(|t| t.abort());
    std::mem::take(&mut *tl.lock().unwrap())
}

async fn run_baseline(client: &Client, round: usize) -> Run {
    let ns = TestNamespace::new(client, "bench-base").await;
    settle(&format!("round {round}: baseline")).await;
    let m = Measure::start(client, &format!("baseline-{round}")).await;
    let (secs, tl, tasks) = baseline(client, &ns.name).await;
    let run = m.finish(client, secs, tl, tasks).await;
    eprintln!("round {round}: baseline (Jobs then Deployments created directly): {secs:.1}s");
    remove_namespace(client, ns).await;
    run
}

async fn run_operator(client: &Client, round: usize) -> (Run, OperatorFigures) {
    let ns = TestNamespace::new(client, "bench-op").await;
    let op = Operator::start(&["--namespace", &ns.name]);
    wait_until(
        "the operator to be ready",
        Duration::from_secs(60),
        async || matches!(http_get(op.admin, "/ready").await, Some((200, _))),
    )
    .await;
    let envs: Api<Environment> = Api::namespaced(client.clone(), &ns.name);
    envs.create(&PostParams::default(), &environment(&ns.name))
        .await
        .unwrap();
    let rels: Api<Release> = Api::namespaced(client.clone(), &ns.name);
    settle(&format!("round {round}: operator")).await;
    let m = Measure::start(client, &format!("operator-{round}")).await;
    let t0 = Instant::now();
    let (tl, tasks) = watch_timeline(client, &ns.name, t0);
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
    // The watch in `tl` records each Release the moment it is Ready for its generation.
    wait_until("all Releases Ready", Duration::from_secs(900), async || {
        tl.lock().unwrap().ready.len() == RELEASES
    })
    .await;
    let secs = t0.elapsed().as_secs_f64();
    let (rss_mib, cpu_s) = proc_stats(op.child.id());
    let run = m.finish(client, secs, tl, tasks).await;
    let (_, body) = http_get(op.admin, "/metrics").await.unwrap_or_default();
    let counters: Vec<&str> = body
        .lines()
        .filter(|l| {
            [
                "slipway_reconciliations_total",
                "slipway_reconcile_failures_total",
                "slipway_stale_reads_total",
                "slipway_status_writes_total",
            ]
            .iter()
            .any(|m| l.starts_with(m))
        })
        .collect();
    eprintln!(
        "round {round}: operator: {secs:.1}s; {}",
        counters.join(", ")
    );

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

    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), &ns.name);
    let mut events_by_reason: std::collections::BTreeMap<String, usize> = Default::default();
    for e in events.list(&ListParams::default()).await.unwrap().items {
        *events_by_reason
            .entry(e.reason.unwrap_or_default())
            .or_default() += 1;
    }
    let (_, body) = http_get(op.admin, "/metrics").await.unwrap_or_default();
    let mut operator_requests: Vec<(u64, String)> = body
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
    operator_requests.sort_by(|a, b| b.cmp(a));
    drop(op);
    remove_namespace(client, ns).await;
    (
        run,
        OperatorFigures {
            rss_mib,
            cpu_s,
            rss_mib_end,
            cpu_s_end,
            noop_writes,
            events_by_reason,
            operator_requests,
        },
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[tokio::main]
async fn main() {
    let client = client_with_crds().await;
    let version = client
        .apiserver_version()
        .await
        .map(|v| v.git_version)
        .unwrap_or_default();
    // Both runs saturate the two cores, so one pair of runs moves by whole seconds with
    // scheduling luck; several rounds, alternating which side goes first, give a median.
    let rounds: usize = std::env::var("SLIPWAY_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|r| *r >= 1)
        .unwrap_or(5);
    eprintln!(
        "bench-release: {RELEASES} Releases x {SERVICES} services against Kubernetes {version}, {rounds} round(s)"
    );

    let mut results = Vec::new();
    let mut client = client;
    for round in 1..=rounds {
        // Odd rounds run the baseline first, even rounds the operator first.
        let (base, (op, figs)) = if round % 2 == 1 {
            client = fresh_plane(client, &format!("round {round}: baseline")).await;
            let b = run_baseline(&client, round).await;
            client = fresh_plane(client, &format!("round {round}: operator")).await;
            (b, run_operator(&client, round).await)
        } else {
            client = fresh_plane(client, &format!("round {round}: operator")).await;
            let o = run_operator(&client, round).await;
            client = fresh_plane(client, &format!("round {round}: baseline")).await;
            (run_baseline(&client, round).await, o)
        };
        eprintln!(
            "round {round}: ratio {:.2} (operator {:.1}s / baseline {:.1}s); control-plane CPU s, operator run {} / baseline {}; CPU stolen by the hypervisor {:.1} / {:.1} s",
            op.secs / base.secs,
            op.secs,
            base.secs,
            op.control_plane_cpu,
            base.control_plane_cpu,
            op.steal_s,
            base.steal_s
        );
        results.push((base, op, figs));
    }

    println!("| round | operator s | baseline s | ratio | control-plane CPU s, operator / baseline | operator peak RSS (MiB) | operator CPU s | no-op writes |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (i, (b, o, f)) in results.iter().enumerate() {
        println!(
            "| {} | {:.1} | {:.1} | {:.2} | {:.1} / {:.1} | {:.1} | {:.1} | {} |",
            i + 1,
            o.secs,
            b.secs,
            o.secs / b.secs,
            o.cpu_total,
            b.cpu_total,
            f.rss_mib.max(f.rss_mib_end),
            f.cpu_s,
            f.noop_writes
        );
    }
    let ratios: Vec<f64> = results.iter().map(|(b, o, _)| o.secs / b.secs).collect();
    let (base, op, figs) = results.last().unwrap();
    println!();
    println!("| figure | value |");
    println!("| --- | --- |");
    println!("| Releases ({SERVICES} services + a migration each) | {RELEASES} |");
    println!("| rounds | {rounds} |");
    println!(
        "| seconds until all Ready (operator), median | {:.1} |",
        median(results.iter().map(|r| r.1.secs).collect())
    );
    println!(
        "| seconds, same Jobs and Deployments created directly (baseline), median | {:.1} |",
        median(results.iter().map(|r| r.0.secs).collect())
    );
    println!(
        "| ratio operator / baseline, median of rounds | {:.2} (min {:.2}, max {:.2}) |",
        median(ratios.clone()),
        ratios.iter().cloned().fold(f64::INFINITY, f64::min),
        ratios.iter().cloned().fold(0.0, f64::max)
    );
    println!(
        "| operator peak RSS (MiB), largest of rounds | {:.1} |",
        results
            .iter()
            .map(|r| r.2.rss_mib.max(r.2.rss_mib_end))
            .fold(0.0, f64::max)
    );
    println!(
        "| operator CPU seconds until all Ready, median | {:.1} |",
        median(results.iter().map(|r| r.2.cpu_s).collect())
    );
    println!(
        "| write requests during {RELEASES} no-op reconciles, largest of rounds | {} |",
        results.iter().map(|r| r.2.noop_writes).max().unwrap_or(0)
    );
    println!();
    println!("Details of the last round:");
    println!();
    println!("| figure | value |");
    println!("| --- | --- |");
    println!(
        "| operator peak RSS (MiB) | {:.1} (after the no-op round: {:.1}) |",
        figs.rss_mib, figs.rss_mib_end
    );
    println!(
        "| operator CPU seconds until all Ready | {:.1} (after the no-op round: {:.1}) |",
        figs.cpu_s, figs.cpu_s_end
    );
    println!(
        "| control-plane CPU seconds, baseline | {} |",
        base.control_plane_cpu
    );
    println!(
        "| control-plane CPU seconds, operator run | {} |",
        op.control_plane_cpu
    );
    println!();
    println!(
        "Events recorded on the Releases, by reason: {:?}",
        figs.events_by_reason
    );
    println!();
    println!("Where the time goes: when watches first saw each milestone, seconds after the first create, in each round.");
    println!();
    println!("| milestone | median | last | apps |");
    println!("| --- | --- | --- | --- |");
    for (i, (b, o, _)) in results.iter().enumerate() {
        print_timeline(&format!("round {} baseline", i + 1), &b.timeline);
        print_timeline(&format!("round {} operator", i + 1), &o.timeline);
    }
    println!();
    println!("Requests the API server served (everyone: controllers, kwok, scheduler, operator, this bench), largest first:");
    println!();
    println!("| request | baseline | operator run |");
    println!("| --- | --- | --- |");
    let (base_req, op_req) = (&base.requests, &op.requests);
    let mut keys: Vec<&String> = base_req.keys().chain(op_req.keys()).collect();
    keys.sort();
    keys.dedup();
    let n = |m: &HashMap<String, f64>, k: &String| m.get(k).copied().unwrap_or(0.0);
    keys.sort_by(|a, b| {
        (n(op_req, b) + n(base_req, b))
            .partial_cmp(&(n(op_req, a) + n(base_req, a)))
            .unwrap()
    });
    let total = |m: &HashMap<String, f64>| {
        m.iter()
            .filter(|(k, _)| !k.starts_with("watch events"))
            .map(|(_, v)| v)
            .sum::<f64>()
    };
    println!(
        "| all requests | {:.0} | {:.0} |",
        total(base_req),
        total(op_req)
    );
    for k in keys.iter().take(25) {
        println!("| {k} | {:.0} | {:.0} |", n(base_req, k), n(op_req, k));
    }
    let requests = &figs.operator_requests;
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
}
