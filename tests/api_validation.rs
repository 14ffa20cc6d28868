//! The API server itself accepts every example and rejects every invalid manifest, with a
//! message naming the field. Runs against a real kube-apiserver (tests/testenv or KUBECONFIG).

mod common;

use common::*;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::{Api, Client};

fn api_resource(kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("slipway.dev", "v1alpha1", kind))
}

fn dynamic(
    client: &Client,
    ns: &str,
    doc: &serde_json::Value,
) -> (Api<DynamicObject>, DynamicObject) {
    let kind = doc["kind"].as_str().expect("a manifest without kind");
    let mut obj: DynamicObject =
        serde_json::from_value(doc.clone()).expect("a manifest that is not an object");
    obj.metadata.namespace = Some(ns.to_string());
    (
        Api::namespaced_with(client.clone(), ns, &api_resource(kind)),
        obj,
    )
}

/// Checks that a document also deserialises into our own Rust types: examples and code agree.
fn check_typed(doc: &serde_json::Value, file: &str) {
    let r = match doc["kind"].as_str() {
        Some("Environment") => {
            serde_json::from_value::<slipway::api::Environment>(doc.clone()).map(|_| ())
        }
        Some("Release") => serde_json::from_value::<slipway::api::Release>(doc.clone()).map(|_| ()),
        Some("ScaledWorker") => {
            serde_json::from_value::<slipway::api::ScaledWorker>(doc.clone()).map(|_| ())
        }
        other => panic!("{file}: unexpected kind {other:?}"),
    };
    r.unwrap_or_else(|e| {
        panic!(
            "{file}: {} does not match the Rust types: {e}",
            doc["metadata"]["name"]
        )
    });
}

#[tokio::test]
async fn every_example_is_accepted_by_the_api_server() {
    let client = client_with_crds().await;
    let files = files(&repo_root().join("examples"), "yaml");
    assert!(
        files.len() >= 6,
        "expected an example per seed scenario plus a quick start, found {files:?}"
    );
    let mut created = 0;
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        // One namespace per file, as a user applies them: files reuse names like `prod`.
        let ns = TestNamespace::new(&client, "examples").await;
        for doc in yaml_documents(file) {
            match doc["kind"].as_str() {
                Some("Namespace") => continue,
                Some("Secret") | Some("Deployment") => continue,
                _ => {}
            }
            check_typed(&doc, &name);
            let (api, obj) = dynamic(&client, &ns.name, &doc);
            let obj_name = obj.metadata.name.clone().unwrap_or_default();
            api.create(&PostParams::default(), &obj)
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "examples/{name}: {} {obj_name} was rejected: {e}",
                        doc["kind"]
                    )
                });
            created += 1;
        }
    }
    eprintln!(
        "{created} example objects from {} files accepted",
        files.len()
    );
    assert!(
        created >= 10,
        "examples hold only {created} Slipway objects"
    );
}

struct Fixture {
    file: String,
    mistake: String,
    expect: String,
    doc: serde_json::Value,
}

fn fixture(path: &std::path::Path) -> Fixture {
    let text = std::fs::read_to_string(path).unwrap();
    let header = |key: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(&format!("# {key}:"))
                    .map(|s| s.trim().to_string())
            })
            .unwrap_or_else(|| panic!("{} has no `# {key}:` header line", path.display()))
    };
    let docs = yaml_documents(path);
    assert_eq!(
        docs.len(),
        1,
        "{} must hold exactly one document",
        path.display()
    );
    Fixture {
        file: path.file_name().unwrap().to_string_lossy().to_string(),
        mistake: header("mistake"),
        expect: header("expect"),
        doc: docs.into_iter().next().unwrap(),
    }
}

#[tokio::test]
async fn every_invalid_manifest_is_rejected_with_a_message_naming_the_field() {
    let client = client_with_crds().await;
    let ns = TestNamespace::new(&client, "invalid").await;
    let paths = files(&repo_root().join("tests/fixtures/invalid"), "yaml");
    let mut failures = vec![];
    let mut rejected = 0;
    for path in &paths {
        let f = fixture(path);
        let (api, obj) = dynamic(&client, &ns.name, &f.doc);
        match api.create(&PostParams::default(), &obj).await {
            Ok(_) => failures.push(format!(
                "{} ({}): accepted, but it should be rejected",
                f.file, f.mistake
            )),
            Err(kube::Error::Api(s)) if s.code == 422 || s.code == 400 => {
                if s.message.contains(&f.expect) {
                    rejected += 1;
                } else {
                    failures.push(format!(
                        "{}: rejected, but the message lacks {:?}: {}",
                        f.file, f.expect, s.message
                    ));
                }
            }
            Err(e) => failures.push(format!("{}: unexpected error {e}", f.file)),
        }
    }
    eprintln!(
        "{rejected} of {} invalid manifests rejected with a message naming the field",
        paths.len()
    );
    assert!(
        failures.is_empty(),
        "invalid-manifest corpus:\n{}",
        failures.join("\n")
    );
    assert!(
        rejected >= 20,
        "the corpus needs at least 20 distinct mistakes, has {rejected}"
    );
}

#[tokio::test]
async fn release_environment_is_immutable() {
    let client = client_with_crds().await;
    let ns = TestNamespace::new(&client, "immutable").await;
    let dir = repo_root().join("tests/fixtures/immutable");
    let before = yaml_documents(&dir.join("release-before.yaml")).remove(0);
    let after = fixture(&dir.join("release-after.yaml"));
    let (api, obj) = dynamic(&client, &ns.name, &before);
    api.create(&PostParams::default(), &obj)
        .await
        .expect("the original Release is valid");
    let (api, mut changed) = dynamic(&client, &ns.name, &after.doc);
    changed.metadata.managed_fields = None;
    let err = api
        .patch(
            obj.metadata.name.as_deref().unwrap(),
            &PatchParams::apply("slipway-tests").force(),
            &Patch::Apply(&changed),
        )
        .await
        .expect_err("changing spec.environment must be rejected");
    let kube::Error::Api(s) = err else {
        panic!("unexpected error {err}")
    };
    assert_eq!(s.code, 422, "{}", s.message);
    assert!(
        s.message.contains(&after.expect),
        "message lacks {:?}: {}",
        after.expect,
        s.message
    );
}
