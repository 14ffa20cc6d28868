//! Environment behaviour against a real API server: readiness, the target namespace, the list
//! of Releases, and a secret source the platform cannot serve.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, PostParams};
use kube::Api;
use serde_json::json;
use slipway::api::{find_condition, Environment, Phase, Release};

fn env(name: &str, spec: serde_json::Value) -> Environment {
    serde_json::from_value(json!({
        "apiVersion": "slipway.dev/v1alpha1", "kind": "Environment", "metadata": { "name": name }, "spec": spec
    }))
    .unwrap()
}

#[tokio::test]
async fn environment_prepares_its_namespace_and_lists_its_releases() {
    let client = client_with_crds().await;
    let ns = TestNamespace::new(&client, "env").await;
    let target = format!("{}-workloads", ns.name);
    let _op = Operator::start(&["--namespace", &ns.name]);
    let envs: Api<Environment> = Api::namespaced(client.clone(), &ns.name);
    let rels: Api<Release> = Api::namespaced(client.clone(), &ns.name);
    envs.create(
        &PostParams::default(),
        &env(
            "prod",
            json!({ "platform": { "kubernetes": { "namespace": target } } }),
        ),
    )
    .await
    .unwrap();
    let r: Release = serde_json::from_value(json!({
        "apiVersion": "slipway.dev/v1alpha1", "kind": "Release", "metadata": { "name": "shop" },
        "spec": { "environment": "prod", "version": "v1",
                  "services": [ { "name": "api", "image": "example.test/api:v1" } ] }
    }))
    .unwrap();
    rels.create(&PostParams::default(), &r).await.unwrap();

    let e = eventually(
        "Environment Ready and listing shop as Succeeded",
        Duration::from_secs(60),
        || async {
            let e = envs.get("prod").await.ok()?;
            let st = e.status.clone()?;
            let ready = find_condition(&st.conditions, "Ready")?.status == "True";
            let listed = st
                .releases
                .iter()
                .any(|r| r.name == "shop" && r.phase.as_deref() == Some(Phase::Succeeded.as_str()));
            (ready && listed).then_some(e)
        },
    )
    .await;
    let st = e.status.unwrap();
    assert_eq!(st.releases[0].version.as_deref(), Some("v1"));
    assert_eq!(st.releases[0].app.as_deref(), Some("shop"));
    let namespaces: Api<Namespace> = Api::all(client.clone());
    assert!(
        namespaces.get_opt(&target).await.unwrap().is_some(),
        "target namespace {target} was not created"
    );
    // The workloads went to the target namespace, without cross-namespace owner references.
    let d = Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), &target)
        .get("shop-api")
        .await
        .unwrap();
    assert!(d.metadata.owner_references.unwrap_or_default().is_empty());
    // Owner references cannot reach across namespaces, so this Release holds a finalizer.
    let rel = rels.get("shop").await.unwrap();
    assert_eq!(
        rel.metadata.finalizers.unwrap_or_default(),
        vec!["slipway.dev/cleanup".to_string()]
    );

    // Deleting the Release cleans up the other namespace too (finalizer, by label).
    rels.delete("shop", &DeleteParams::default()).await.unwrap();
    let deps: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), &target);
    eventually(
        "workloads in the target namespace to be deleted",
        Duration::from_secs(60),
        || async {
            let d = deps.get_opt("shop-api").await.ok()?;
            d.is_none_or(|d| d.metadata.deletion_timestamp.is_some())
                .then_some(())
        },
    )
    .await;
    // Once the Release is gone, the Environment stops listing it.
    eventually(
        "the Environment to stop listing shop",
        Duration::from_secs(60),
        || async {
            let st = envs.get("prod").await.ok()?.status?;
            st.releases.is_empty().then_some(())
        },
    )
    .await;
    let _ = namespaces
        .delete(&target, &DeleteParams::background())
        .await;
}

#[tokio::test]
async fn a_secret_source_the_platform_cannot_serve_makes_it_not_ready_naming_the_field() {
    let client = client_with_crds().await;
    let ns = TestNamespace::new(&client, "env-bad").await;
    let _op = Operator::start(&["--namespace", &ns.name]);
    let envs: Api<Environment> = Api::namespaced(client.clone(), &ns.name);
    envs.create(
        &PostParams::default(),
        &env(
            "prod",
            json!({ "platform": { "kubernetes": {} },
                    "secrets": [ { "name": "DATABASE_URL",
                                   "from": { "azureKeyVault": { "vaultUrl": "https://kv.vault.azure.net", "secretName": "pg" } } } ] }),
        ),
    )
    .await
    .unwrap();
    let e = eventually(
        "Environment Ready=False",
        Duration::from_secs(60),
        || async {
            let e = envs.get("prod").await.ok()?;
            let c = find_condition(&e.status.as_ref()?.conditions, "Ready")?.clone();
            (c.status == "False").then_some(c)
        },
    )
    .await;
    assert_eq!(e.reason, "InvalidSpec");
    assert!(
        e.message.contains("spec.secrets[0].from.azureKeyVault"),
        "{}",
        e.message
    );
    let st = envs.get("prod").await.unwrap().status.unwrap();
    assert_eq!(
        find_condition(&st.conditions, "Stalled").unwrap().status,
        "True"
    );
}
