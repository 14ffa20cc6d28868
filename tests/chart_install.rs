//! The chart's RBAC is enough to run a Release end to end.
//!
//! `helm install` the chart (`charts/slipway`, CRDs skipped: the harness installs them) into a
//! namespace of its own, then run the `slipway` binary out of cluster with the command line of
//! the chart's Deployment, impersonating the chart's ServiceAccount (kubeconfig `as` /
//! `as-groups`, which kube-rs turns into Impersonate-* headers). The pod the chart creates
//! does not really run on the local control plane's kwok nodes; only its ServiceAccount,
//! ClusterRole, Role and bindings are used.
//!
//! A Release with a migration, two services, an ingress, an autoscaled service and a
//! scheduled job must reach Succeeded, and be deleted through the cleanup finalizer, with no
//! request of the operator refused.
//!
//! helm is taken from PATH: `make test` (hack/test) puts the pinned testenv binaries first.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::{json, Value};
use slipway::api::{Environment, Phase, Release};

const CHART: &str = "charts/slipway";
const TESTENV_HINT: &str = "`make test` (hack/test) puts the local control plane's helm on \
     PATH; to run `cargo test` yourself, add it first: \
     export PATH=\"$(. tests/testenv/versions.sh && echo \"$TESTENV_BIN\"):$PATH\" \
     (tests/testenv/up builds it)";

fn helm() -> Command {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let helm = std::env::split_paths(&path)
        .map(|dir| dir.join("helm"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`helm` is not on PATH: {TESTENV_HINT}"));
    let mut cmd = Command::new(helm);
    cmd.current_dir(repo_root())
        .arg("--kubeconfig")
        .arg(kubeconfig_path())
        .stdin(Stdio::null());
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run(mut cmd: Command) -> Output {
    let desc = format!("{cmd:?}");
    cmd.output()
        .unwrap_or_else(|e| panic!("starting {desc}: {e}"))
}

fn check(cmd: Command) -> Output {
    let desc = format!("{cmd:?}");
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{desc} failed ({}):\n{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// A Helm release, uninstalled when dropped (pass or fail). The namespace goes with the
/// TestNamespace; the ClusterRole and ClusterRoleBinding are cluster-scoped and named after the
/// release, so they are deleted here, by name, even if `helm uninstall` cannot run.
struct HelmRelease {
    name: String,
    namespace: String,
    cluster_scoped: Vec<(&'static str, String)>,
    uninstalled: bool,
}

impl HelmRelease {
    fn uninstall(&mut self) -> Output {
        self.uninstalled = true;
        let mut cmd = helm();
        cmd.args([
            "uninstall",
            &self.name,
            "--namespace",
            &self.namespace,
            "--wait",
        ]);
        run(cmd)
    }
}

impl Drop for HelmRelease {
    fn drop(&mut self) {
        if !self.uninstalled {
            let out = self.uninstall();
            if !out.status.success() {
                eprintln!("helm uninstall {}: {}", self.name, text(&out.stderr).trim());
            }
        }
        let cluster_scoped = std::mem::take(&mut self.cluster_scoped);
        block_on_from_drop(async move {
            use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
            let client = client().await;
            for (kind, name) in cluster_scoped {
                let dp = DeleteParams::background();
                let _ = match kind {
                    "ClusterRole" => Api::<ClusterRole>::all(client.clone())
                        .delete(&name, &dp)
                        .await
                        .map(|_| ()),
                    _ => Api::<ClusterRoleBinding>::all(client.clone())
                        .delete(&name, &dp)
                        .await
                        .map(|_| ()),
                };
            }
        });
    }
}

/// A file removed when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A copy of the admin kubeconfig whose every user impersonates `user` with `groups`:
/// authentication stays the admin's, authorization is the impersonated identity's.
fn impersonating_kubeconfig(user: &str, groups: &[String]) -> TempFile {
    let admin = kubeconfig_path();
    let mut config: Value = serde_yaml::from_str(
        &std::fs::read_to_string(&admin)
            .unwrap_or_else(|e| panic!("reading {}: {e}", admin.display())),
    )
    .unwrap_or_else(|e| panic!("parsing {}: {e}", admin.display()));
    let users = config["users"]
        .as_array_mut()
        .unwrap_or_else(|| panic!("{}: no users", admin.display()));
    assert!(!users.is_empty(), "{}: no users", admin.display());
    for u in users {
        u["user"]["as"] = json!(user);
        u["user"]["as-groups"] = json!(groups);
    }
    let path = std::env::temp_dir().join(format!(
        "slipway-impersonate-{}.kubeconfig",
        random_suffix()
    ));
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        // It still holds the admin's client credentials: readable by its owner only.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        f.write_all(serde_yaml::to_string(&config).unwrap().as_bytes())
            .unwrap();
    }
    TempFile(path)
}

async fn client_from(path: &Path) -> Client {
    let kubeconfig =
        Kubeconfig::read_from(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()));
    Client::try_from(config).expect("building a client")
}

fn is_status(r: &Result<impl Sized, kube::Error>, code: u16) -> bool {
    matches!(r, Err(kube::Error::Api(s)) if s.code == code)
}

fn documents(yaml: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("not YAML: {e}\n{yaml}")))
        .filter(|v| !v.is_null())
        .collect()
}

/// Lines of the operator's log where the API server refused a request. Every refusal by RBAC
/// reads "... is forbidden: User ... cannot <verb> resource ...".
fn refusals(logs: &str) -> Vec<&str> {
    logs.lines()
        .filter(|l| l.to_lowercase().contains("forbidden"))
        .collect()
}

/// Panics naming the refused requests, if any.
fn assert_no_refusals(op: &Operator, user: &str) {
    let logs = op.logs();
    let refused = refusals(&logs);
    assert!(
        refused.is_empty(),
        "the API server refused requests of the operator as {user}: the chart's RBAC \
         (charts/slipway/templates/rbac.yaml) lacks a rule:\n{}\n\nfull log:\n{logs}",
        refused.join("\n")
    );
}

fn release_spec() -> Value {
    json!({
        "environment": "dev",
        "version": "v1.0.0",
        "services": [
            { "name": "api", "image": "example.test/shop-api:v1.0.0",
              "ports": [ { "name": "http", "port": 3000 } ],
              "replicas": { "min": 2, "max": 2 },
              "healthCheck": { "path": "/health", "port": "http" },
              "ingress": { "external": true, "host": "api.shop.test", "path": "/" } },
            { "name": "worker", "image": "example.test/shop-worker:v1.0.0",
              "replicas": { "min": 1, "max": 3 } }
        ],
        "jobs": [ { "name": "nightly", "image": "example.test/shop-jobs:v1.0.0",
                    "schedule": "0 2 * * *" } ],
        "migration": { "image": "example.test/shop-migrator:v1.0.0", "command": ["migrate"],
                       "timeoutSeconds": 120 },
        "rollout": { "progressDeadlineSeconds": 60 }
    })
}

#[tokio::test]
async fn operator_with_only_the_charts_rbac_rolls_a_release_out() {
    let admin = client_with_crds().await;
    let ns = TestNamespace::new(&admin, "chart-install").await;
    // Contains "slipway", so the chart's full name (ClusterRole, Lease, ...) is the release
    // name itself: unique per run.
    let release = format!("slipway-it-{}", random_suffix());

    let mut helm_release = HelmRelease {
        name: release.clone(),
        namespace: ns.name.clone(),
        cluster_scoped: vec![
            ("ClusterRole", release.clone()),
            ("ClusterRoleBinding", release.clone()),
        ],
        uninstalled: false,
    };
    let mut cmd = helm();
    cmd.args([
        "install",
        &release,
        CHART,
        "--namespace",
        &ns.name,
        "--skip-crds",
    ])
    .args(["--set", "replicaCount=1"])
    .args(["--set", "leaderElection.enabled=true"])
    .args(["--set", &format!("operator.watchNamespace={}", ns.name)]);
    check(cmd);

    // What the chart installed, as Helm recorded it.
    let mut cmd = helm();
    cmd.args(["get", "manifest", &release, "--namespace", &ns.name]);
    let manifest = documents(&text(&check(cmd).stdout));
    let of_kind = |k: &str| -> Vec<&Value> { manifest.iter().filter(|d| d["kind"] == k).collect() };
    for (kind, name) in &helm_release.cluster_scoped {
        assert!(
            of_kind(kind)
                .iter()
                .any(|d| d["metadata"]["name"] == name.as_str()),
            "the chart installed no {kind} {name}: the cleanup would miss it"
        );
    }
    assert_eq!(
        of_kind("Role").len(),
        1,
        "leader election: a Role for the Lease"
    );
    let deployment = of_kind("Deployment")
        .first()
        .copied()
        .expect("the chart installed a Deployment")
        .clone();
    let pod_spec = &deployment["spec"]["template"]["spec"];
    let account = pod_spec["serviceAccountName"]
        .as_str()
        .expect("the Deployment names its ServiceAccount")
        .to_string();
    assert!(
        of_kind("ServiceAccount")
            .iter()
            .any(|d| d["metadata"]["name"] == account.as_str()),
        "the chart installed no ServiceAccount {account}"
    );
    // The container's command line, with the admin server moved to a free loopback port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let admin_addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut args: Vec<String> = pod_spec["containers"][0]["args"]
        .as_array()
        .expect("the operator container has args")
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let at = args
        .iter()
        .position(|a| a == "--admin-addr")
        .expect("the chart passes --admin-addr");
    args[at + 1] = admin_addr.to_string();
    for flag in ["--leader-elect", "--namespace"] {
        assert!(
            args.iter().any(|a| a == flag),
            "chart args {args:?} lack {flag}"
        );
    }
    let lease_name = args[args.iter().position(|a| a == "--leader-lease").unwrap() + 1].clone();

    // Impersonate the ServiceAccount, with the groups the API server gives its tokens.
    let user = format!("system:serviceaccount:{}:{account}", ns.name);
    let groups = vec![
        "system:serviceaccounts".to_string(),
        format!("system:serviceaccounts:{}", ns.name),
        "system:authenticated".to_string(),
    ];
    let kubeconfig = impersonating_kubeconfig(&user, &groups);
    let as_sa = client_from(&kubeconfig.0).await;

    // The bindings take effect once the authorizer's cache has them: wait, so that an early
    // refusal in the operator's log means a missing rule rather than a slow cache.
    let releases_as_sa: Api<Release> = Api::namespaced(as_sa.clone(), &ns.name);
    let leases_as_sa: Api<Lease> = Api::namespaced(as_sa.clone(), &ns.name);
    eventually(
        "the chart's ClusterRoleBinding and RoleBinding to take effect",
        Duration::from_secs(30),
        || async {
            let list = releases_as_sa.list(&ListParams::default()).await;
            let lease = leases_as_sa.get(&lease_name).await;
            // 404 on the Lease: allowed to read it, it just does not exist yet.
            (list.is_ok() && is_status(&lease, 404)).then_some(())
        },
    )
    .await;
    // The control: impersonation is really in force (the admin could create a Secret).
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "should-not-exist" },
        "stringData": { "k": "v" }
    }))
    .unwrap();
    let created = Api::<Secret>::namespaced(as_sa.clone(), &ns.name)
        .create(&PostParams::default(), &secret)
        .await;
    assert!(
        is_status(&created, 403),
        "creating a Secret as {user} was not forbidden ({created:?}): impersonation is not in force"
    );

    // The operator, out of cluster, as the ServiceAccount, with the chart's arguments and the
    // environment the Deployment gives it.
    let identity = format!("chart-install-{}", random_suffix());
    let log = std::env::temp_dir().join(format!("slipway-chart-install-{}.log", random_suffix()));
    let file = std::fs::File::create(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(&args)
        .env("KUBECONFIG", &kubeconfig.0)
        .env("POD_NAME", &identity)
        .env("POD_NAMESPACE", &ns.name)
        .env("RUST_LOG", "info,slipway=debug")
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .expect("starting the slipway binary");
    let mut op = Operator {
        child,
        admin: admin_addr,
        log,
    };
    eprintln!("operator: slipway {}", args.join(" "));

    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Some((200, _)) = http_get(op.admin, "/ready").await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(
        ready.is_ok(),
        "the operator was not ready within 60s as {user} (watch caches not synced?):\n{}",
        op.logs()
    );

    let envs: Api<Environment> = Api::namespaced(admin.clone(), &ns.name);
    envs.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "apiVersion": "slipway.dev/v1alpha1", "kind": "Environment",
            "metadata": { "name": "dev" }, "spec": { "platform": { "kubernetes": {} } }
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    let releases: Api<Release> = Api::namespaced(admin.clone(), &ns.name);
    releases
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "slipway.dev/v1alpha1", "kind": "Release",
                "metadata": { "name": "shop" }, "spec": release_spec()
            }))
            .unwrap(),
        )
        .await
        .unwrap();

    let done = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            // A refusal will not go away by waiting: say so at once.
            assert_no_refusals(&op, &user);
            if let Ok(r) = releases.get("shop").await {
                let st = r.status.clone().unwrap_or_default();
                if st.observed_generation == r.metadata.generation {
                    if st.phase == Some(Phase::Succeeded) {
                        return Ok(r);
                    }
                    if matches!(st.phase, Some(Phase::Failed | Phase::RolledBack)) {
                        return Err(r);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    let r = match done {
        Ok(Ok(r)) => r,
        other => {
            let status = match other {
                Ok(Err(r)) => r.status,
                _ => releases.get("shop").await.ok().and_then(|r| r.status),
            };
            panic!(
                "the Release did not reach Succeeded under the chart's RBAC; status: {status:#?}\n\
                 operator log:\n{}",
                op.logs()
            )
        }
    };

    // Everything the rollout creates is there.
    let st = r.status.unwrap();
    let migration = st.migration.expect("a migration record");
    assert_eq!(migration.state, "Succeeded");
    let job = Api::<Job>::namespaced(admin.clone(), &ns.name)
        .get_opt(&migration.job)
        .await
        .unwrap();
    assert!(job.is_some(), "migration Job {} is missing", migration.job);
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &ns.name);
    for d in ["shop-api", "shop-worker"] {
        assert!(
            deployments.get_opt(d).await.unwrap().is_some(),
            "Deployment {d} is missing"
        );
    }
    assert!(Api::<Service>::namespaced(admin.clone(), &ns.name)
        .get_opt("shop-api")
        .await
        .unwrap()
        .is_some());
    assert!(Api::<Ingress>::namespaced(admin.clone(), &ns.name)
        .get_opt("shop-api")
        .await
        .unwrap()
        .is_some());
    assert!(
        Api::<HorizontalPodAutoscaler>::namespaced(admin.clone(), &ns.name)
            .get_opt("shop-worker")
            .await
            .unwrap()
            .is_some()
    );
    assert!(Api::<CronJob>::namespaced(admin.clone(), &ns.name)
        .get_opt("shop-nightly")
        .await
        .unwrap()
        .is_some());
    assert!(
        !Api::<ControllerRevision>::namespaced(admin.clone(), &ns.name)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "the revision's plan was not stored as a ControllerRevision"
    );
    // It recorded Kubernetes Events on the Release (events.k8s.io, create and patch).
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(admin.clone(), &ns.name)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(
        events
            .items
            .iter()
            .any(|e| e.regarding.as_ref().is_some_and(
                |r| r.kind.as_deref() == Some("Release") && r.name.as_deref() == Some("shop")
            )),
        "no Event was recorded on the Release"
    );
    // It acted as the Lease holder, through the chart's Role.
    let holder = Api::<Lease>::namespaced(admin.clone(), &ns.name)
        .get(&lease_name)
        .await
        .unwrap()
        .spec
        .and_then(|s| s.holder_identity);
    assert_eq!(holder.as_deref(), Some(identity.as_str()));

    // Deleting the Release runs the cleanup finalizer under the same RBAC.
    releases
        .delete("shop", &DeleteParams::default())
        .await
        .unwrap();
    let gone = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            assert_no_refusals(&op, &user);
            let r = releases.get_opt("shop").await.ok().flatten();
            let live = deployments
                .list(&ListParams::default().labels("slipway.dev/release=shop"))
                .await
                .map(|l| {
                    l.items
                        .iter()
                        .filter(|d| d.metadata.deletion_timestamp.is_none())
                        .count()
                })
                .unwrap_or(usize::MAX);
            if r.is_none() && live == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(
        gone.is_ok(),
        "the Release and its Deployments were not deleted within 60s:\n{}",
        op.logs()
    );

    let status = op.terminate(Duration::from_secs(20));
    assert_no_refusals(&op, &user);
    assert!(
        status.is_some_and(|s| s.success()),
        "the operator did not exit cleanly on SIGTERM ({status:?}):\n{}",
        op.logs()
    );

    // Uninstall: nothing cluster-scoped is left behind.
    let out = helm_release.uninstall();
    assert!(
        out.status.success(),
        "helm uninstall failed: {}",
        text(&out.stderr)
    );
    let left = Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(admin.clone())
        .get_opt(&release)
        .await
        .unwrap();
    assert!(
        left.is_none_or(|c| c.metadata.deletion_timestamp.is_some()),
        "ClusterRole {release} left after helm uninstall"
    );
}
