//! `slipway run` on a cluster without the CRDs exits with a message saying what to install.
//! Removing CRDs is cluster-wide, so this runs only on the control plane this test run owns
//! (`make test` sets SLIPWAY_TESTENV_OWNED=1); elsewhere it says so and fails loudly rather
//! than passing silently.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::DeleteParams;
use kube::Api;

#[tokio::test]
async fn run_without_crds_exits_with_a_clear_message() {
    assert!(
        owns_cluster(),
        "this test removes the Slipway CRDs cluster-wide; run it through `make test` (which owns its \
         control plane and sets SLIPWAY_TESTENV_OWNED=1), or exclude it with `--skip run_without_crds`"
    );
    let client = client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    release_finalizers(&client, None).await;
    for crd in slipway::api::crds() {
        let _ = crds
            .delete(
                crd.metadata.name.as_deref().unwrap(),
                &DeleteParams::foreground(),
            )
            .await;
    }
    eventually(
        "the Slipway CRDs to be gone",
        Duration::from_secs(60),
        || async {
            let left = crds.list(&Default::default()).await.ok()?;
            (!left.items.iter().any(|c| c.spec.group == "slipway.dev")).then_some(())
        },
    )
    .await;

    let mut op = Operator::start(&[]);
    let status = eventually("the operator to exit", Duration::from_secs(30), || {
        let s = op.child.try_wait().ok().flatten();
        async move { s }
    })
    .await;
    let logs = op.logs();
    install_crds(&client).await;
    assert!(
        !status.success(),
        "the operator should fail without CRDs; logs:\n{logs}"
    );
    assert!(
        logs.contains("is not installed") && logs.contains("crds/"),
        "the message should say which CRD is missing and how to install it; logs:\n{logs}"
    );
}
