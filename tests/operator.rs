//! The `slipway run` binary against a real API server: readiness, status writes, metrics and
//! graceful shutdown.

mod common;

use std::time::Duration;

use common::*;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use slipway::api::{find_condition, Environment, Release, ScaledWorker};

fn env_manifest(name: &str) -> Environment {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "slipway.dev/v1alpha1", "kind": "Environment",
        "metadata": { "name": name },
        "spec": { "platform": { "kubernetes": {} } }
    }))
    .unwrap()
}

fn release_manifest(name: &str, env: &str, version: &str) -> Release {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "slipway.dev/v1alpha1", "kind": "Release",
        "metadata": { "name": name },
        "spec": { "environment": env, "version": version,
                  "services": [ { "name": "api", "image": format!("example/api:{version}") } ] }
    }))
    .unwrap()
}

fn worker_manifest(name: &str) -> ScaledWorker {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "slipway.dev/v1alpha1", "kind": "ScaledWorker",
        "metadata": { "name": name },
        "spec": { "target": { "deployment": { "name": "legacy-worker" } },
                  "triggers": [ { "name": "jobs", "targetPerReplica": 10,
                                  "redis": { "address": "redis://127.0.0.1:6379", "list": "jobs" } } ] }
    }))
    .unwrap()
}

#[tokio::test]
async fn operator_becomes_ready_writes_status_and_stops_on_sigterm() {
    let client = client_with_crds().await;
    let ns = TestNamespace::new(&client, "operator").await;
    let mut op = Operator::start(&["--namespace", &ns.name]);

    eventually("/ready to answer 200", Duration::from_secs(60), || async {
        match http_get(op.admin, "/ready").await {
            Some((200, _)) => Some(()),
            _ => None,
        }
    })
    .await;
    assert_eq!(
        http_get(op.admin, "/live").await.map(|r| r.0),
        Some(200),
        "logs:\n{}",
        op.logs()
    );

    let envs: Api<Environment> = Api::namespaced(client.clone(), &ns.name);
    let rels: Api<Release> = Api::namespaced(client.clone(), &ns.name);
    let sws: Api<ScaledWorker> = Api::namespaced(client.clone(), &ns.name);
    envs.create(&PostParams::default(), &env_manifest("dev"))
        .await
        .unwrap();
    rels.create(
        &PostParams::default(),
        &release_manifest("shop", "dev", "v1"),
    )
    .await
    .unwrap();
    sws.create(&PostParams::default(), &worker_manifest("worker"))
        .await
        .unwrap();

    let env = eventually(
        "Environment status.observedGeneration",
        Duration::from_secs(30),
        || async {
            let e = envs.get("dev").await.ok()?;
            (e.status.as_ref()?.observed_generation == e.metadata.generation).then_some(e)
        },
    )
    .await;
    let st = env.status.unwrap();
    assert_eq!(st.platform.as_deref(), Some("kubernetes"));
    assert_eq!(
        find_condition(&st.conditions, "Ready").map(|c| c.status.as_str()),
        Some("True")
    );
    // Abnormal-true (kstatus): absent once the Environment has converged.
    assert_eq!(
        find_condition(&st.conditions, "Reconciling").map(|c| c.status.as_str()),
        None,
        "{:?}",
        st.conditions
    );

    let sw = eventually(
        "ScaledWorker status.observedGeneration",
        Duration::from_secs(30),
        || async {
            let s = sws.get("worker").await.ok()?;
            (s.status.as_ref()?.observed_generation == s.metadata.generation).then_some(s)
        },
    )
    .await;
    assert_eq!(
        sw.status.unwrap().target.as_deref(),
        Some("deployment/legacy-worker")
    );

    // A spec change is observed: observedGeneration follows generation, conditions stay unique.
    let r1 = eventually(
        "Release status.observedGeneration",
        Duration::from_secs(30),
        || async {
            let r = rels.get("shop").await.ok()?;
            (r.status.as_ref()?.observed_generation == r.metadata.generation).then_some(r)
        },
    )
    .await;
    rels.patch(
        "shop",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"version": "v2"}})),
    )
    .await
    .unwrap();
    let r2 = eventually(
        "Release observedGeneration after a spec change",
        Duration::from_secs(30),
        || async {
            let r = rels.get("shop").await.ok()?;
            let seen = r.status.as_ref()?.observed_generation;
            (seen == r.metadata.generation && seen > r1.metadata.generation).then_some(r)
        },
    )
    .await;
    let conds = r2.status.unwrap().conditions;
    let mut types: Vec<&str> = conds.iter().map(|c| c.type_.as_str()).collect();
    types.sort();
    types.dedup();
    assert_eq!(
        types.len(),
        conds.len(),
        "duplicated condition types: {conds:?}"
    );

    let (code, body) = http_get(op.admin, "/metrics")
        .await
        .expect("/metrics answers");
    assert_eq!(code, 200);
    assert!(
        body.contains("slipway_reconciliations_total{kind=\"Release\"}"),
        "metrics:\n{body}"
    );
    assert!(body.contains("slipway_ready 1"), "metrics:\n{body}");

    let status = op
        .terminate(Duration::from_secs(15))
        .expect("the operator did not exit within 15s of SIGTERM");
    assert!(
        status.success(),
        "exit status {status} after SIGTERM; logs:\n{}",
        op.logs()
    );
}

#[tokio::test]
async fn a_no_op_reconcile_writes_nothing() {
    let f = Fixture::new("noop").await;
    let envs: Api<Environment> = f.api();
    envs.create(&PostParams::default(), &env_manifest("staging"))
        .await
        .unwrap();
    let first = eventually("Environment status", Duration::from_secs(60), || async {
        let e = envs.get("staging").await.ok()?;
        (e.status.as_ref()?.observed_generation == e.metadata.generation).then_some(e)
    })
    .await;
    // Touch an annotation: the watch fires a reconcile whose outcome equals the stored status.
    envs.patch(
        "staging",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"annotations": {"touched": "1"}}})),
    )
    .await
    .unwrap();
    let touched = envs.get("staging").await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = envs.get("staging").await.unwrap();
    assert_eq!(
        after.metadata.resource_version,
        touched.metadata.resource_version,
        "the reconcile after a metadata-only change wrote to the object; logs:\n{}",
        f.op.logs()
    );
    assert_eq!(after.status, first.status);
}

#[tokio::test]
async fn concurrent_reconciles_share_one_connection_to_the_api_server() {
    let f = Fixture::new("h2").await;
    f.api::<Environment>()
        .create(&PostParams::default(), &env_manifest("dev"))
        .await
        .unwrap();
    let releases: Api<Release> = f.api();
    // 40 Releases at once: 40 reconciles in flight, each with several requests.
    futures::future::join_all((0..40).map(|i| {
        let releases = releases.clone();
        async move {
            releases
                .create(
                    &PostParams::default(),
                    &release_manifest(&format!("app{i}"), "dev", "v1"),
                )
                .await
                .unwrap()
        }
    }))
    .await;
    eventually(
        "all 40 Releases to report status",
        Duration::from_secs(90),
        || async {
            let l = releases.list(&Default::default()).await.ok()?;
            l.items
                .iter()
                .all(|r| {
                    r.status.as_ref().and_then(|s| s.observed_generation) == r.metadata.generation
                })
                .then_some(())
        },
    )
    .await;
    let port = config()
        .await
        .cluster_url
        .port_u16()
        .expect("the test cluster's URL names a port");
    let conns = tcp_connections_to(f.op.child.id(), port);
    // HTTP/2 multiplexes every request and watch over one connection; an HTTP/1.1 pool opens
    // one per request in flight. One more is allowed for a reconnect in progress.
    assert!(
        (1..=2).contains(&conns),
        "the operator holds {conns} connections to the API server (port {port}); want 1"
    );
}
