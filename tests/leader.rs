//! Leader election with two operator processes against a real API server: only the Lease
//! holder acts; when it is killed mid-rollout the other takes over within the lease duration
//! and the migration is not run twice.

mod common;

use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, PostParams};
use kube::Api;
use serde_json::json;
use slipway::api::{Environment, Phase, Release};

#[tokio::test]
async fn only_the_lease_holder_acts_and_the_standby_takes_over_without_rerunning_the_migration() {
    let client = client_with_crds().await;
    let ns = TestNamespace::new(&client, "leader").await;
    let lease_name = "slipway-leader-test";
    let args = [
        "--namespace",
        &ns.name,
        "--leader-elect",
        "--leader-namespace",
        &ns.name,
        "--leader-lease",
        lease_name,
        "--leader-lease-seconds",
        "6",
    ];
    let mut first = Operator::start(&args);
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns.name);
    let holder = eventually("a Lease holder", Duration::from_secs(30), || async {
        leases
            .get_opt(lease_name)
            .await
            .ok()??
            .spec?
            .holder_identity
    })
    .await;
    let second = Operator::start(&args);
    // Both are up (and ready: a standby must not block rolling updates of the operator).
    for op in [&first, &second] {
        eventually("/ready", Duration::from_secs(30), || async {
            matches!(http_get(op.admin, "/ready").await, Some((200, _))).then_some(())
        })
        .await;
    }

    let envs: Api<Environment> = Api::namespaced(client.clone(), &ns.name);
    envs.create(
        &PostParams::default(),
        &serde_json::from_value(
            json!({"apiVersion": "slipway.dev/v1alpha1", "kind": "Environment",
            "metadata": {"name": "dev"}, "spec": {"platform": {"kubernetes": {}}}}),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    let rels: Api<Release> = Api::namespaced(client.clone(), &ns.name);
    rels.create(
        &PostParams::default(),
        &serde_json::from_value(
            json!({"apiVersion": "slipway.dev/v1alpha1", "kind": "Release",
            "metadata": {"name": "shop"},
            "spec": {"environment": "dev", "version": "v1",
                     "migration": {"image": "slipway.test/slow:latest"},
                     "services": [{"name": "api", "image": "example.test/api:v1"}]}}),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns.name);
    eventually("the migration Job", Duration::from_secs(30), || async {
        (!jobs
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .is_empty())
        .then_some(())
    })
    .await;
    // Only the holder reconciled so far.
    assert!(
        first.metric("slipway_reconciliations_total{", &[]).await > 0,
        "the Lease holder ({holder}) did not reconcile"
    );
    assert_eq!(
        second.metric("slipway_reconciliations_total{", &[]).await,
        0,
        "the standby reconciled while not holding the Lease"
    );

    // Kill the leader mid-migration: the standby takes over within the lease duration.
    let killed_at = Instant::now();
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let new_holder = eventually(
        "the standby to take the Lease",
        Duration::from_secs(20),
        || async {
            let h = leases
                .get_opt(lease_name)
                .await
                .ok()??
                .spec?
                .holder_identity?;
            (h != holder).then_some(h)
        },
    )
    .await;
    let takeover = killed_at.elapsed();
    eprintln!("takeover by {new_holder} after {takeover:?}");
    assert!(
        takeover < Duration::from_secs(6 + 4),
        "takeover took {takeover:?}, lease is 6s"
    );
    eventually(
        "the Release to succeed under the new leader",
        Duration::from_secs(90),
        || async {
            let r = rels.get("shop").await.ok()?;
            (r.status?.phase == Some(Phase::Succeeded)).then_some(())
        },
    )
    .await;
    assert!(second.metric("slipway_reconciliations_total{", &[]).await > 0);
    assert_eq!(
        jobs.list(&ListParams::default()).await.unwrap().items.len(),
        1,
        "one migration Job"
    );
    let pods = Api::<Pod>::namespaced(client.clone(), &ns.name)
        .list(&ListParams::default().labels("app.kubernetes.io/component=migration"))
        .await
        .unwrap();
    assert_eq!(pods.items.len(), 1, "the migration ran once");
    drop(second);
}
