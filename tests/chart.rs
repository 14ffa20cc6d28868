//! The Helm chart (`charts/slipway`), the Argo CD health checks and the shell scripts.
//!
//! - The chart's CRDs are exact copies of `crds/` (no cluster needed).
//! - `helm lint`; `helm template` with default values and with every option on, validated by
//!   the API server itself (`kubectl apply --dry-run=server`) in a namespace that enforces Pod
//!   Security `restricted`; a wrong value fails `helm template` naming the value.
//! - The chart's RBAC, really applied, checked with `kubectl auth can-i` as its ServiceAccount:
//!   what the operator needs is allowed; Secret writes, RBAC changes and cluster-admin are not.
//! - `lua5.4 tests/gitops/run-lua-tests.lua` and `shellcheck` pass.
//!
//! helm and kubectl are taken from PATH: `make test` (hack/test) puts the pinned testenv
//! binaries first. lua5.4 and shellcheck come from Debian (hack/deps installs them).

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{client_with_crds, kubeconfig_path, random_suffix, repo_root, TestNamespace};
use serde_json::{json, Value};

const CHART: &str = "charts/slipway";
const ALL_OPTIONS: &str = "charts/slipway/ci/all-options-values.yaml";
const TESTENV_HINT: &str = "`make test` (hack/test) puts the local control plane's kubectl and \
     helm on PATH; to run `cargo test` yourself, add them first: \
     export PATH=\"$(. tests/testenv/versions.sh && echo \"$TESTENV_BIN\"):$PATH\" \
     (tests/testenv/up builds them)";

/// The path of `name` on PATH, or a panic saying how to get it.
fn tool(name: &str, hint: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{name}` is not on PATH: {hint}"))
}

fn helm() -> Command {
    let mut cmd = Command::new(tool("helm", TESTENV_HINT));
    cmd.current_dir(repo_root());
    cmd
}

fn kubectl() -> Command {
    let mut cmd = Command::new(tool("kubectl", TESTENV_HINT));
    cmd.current_dir(repo_root())
        .arg("--kubeconfig")
        .arg(kubeconfig_path());
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs a command with `stdin` as its input and returns its output, whatever its exit status.
fn run(mut cmd: Command, stdin: Option<&str>) -> Output {
    let desc = format!("{cmd:?}");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("starting {desc}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("a piped stdin");
        pipe.write_all(input.as_bytes())
            .unwrap_or_else(|e| panic!("writing the input of {desc}: {e}"));
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {desc}: {e}"))
}

/// Runs a command that must succeed.
fn check(cmd: Command, stdin: Option<&str>) -> Output {
    let desc = format!("{cmd:?}");
    let out = run(cmd, stdin);
    assert!(
        out.status.success(),
        "{desc} failed ({}):\n{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

fn helm_template(release: &str, namespace: &str, extra: &[&str]) -> String {
    let mut cmd = helm();
    cmd.args(["template", release, CHART, "--namespace", namespace])
        .args(extra);
    text(&check(cmd, None).stdout)
}

/// Every non-empty YAML document of a stream.
fn documents(yaml: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| {
            Value::deserialize(d)
                .unwrap_or_else(|e| panic!("the rendered chart is not YAML: {e}\n{yaml}"))
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn to_yaml(docs: &[Value]) -> String {
    docs.iter()
        .map(|d| format!("---\n{}", serde_yaml::to_string(d).unwrap()))
        .collect()
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

fn kinds(docs: &[Value]) -> BTreeSet<String> {
    docs.iter().map(|d| kind(d).to_string()).collect()
}

fn the<'a>(docs: &'a [Value], wanted: &str) -> &'a Value {
    let mut found = docs.iter().filter(|d| kind(d) == wanted);
    let first = found
        .next()
        .unwrap_or_else(|| panic!("the chart rendered no {wanted}"));
    assert!(
        found.next().is_none(),
        "the chart rendered more than one {wanted}"
    );
    first
}

/// `kubectl apply --dry-run=server` into a namespace: the API server validates (schemas,
/// admission, Pod Security) and persists nothing.
fn dry_run_apply(namespace: &str, docs: &[Value]) -> Output {
    let mut cmd = kubectl();
    cmd.args(["apply", "--dry-run=server", "-n", namespace, "-f", "-"]);
    let yaml = to_yaml(docs);
    check(cmd, Some(yaml.as_str()))
}

/// Labels a namespace so Pod Security Admission enforces (and warns about) `restricted`.
fn enforce_restricted(namespace: &str) {
    let mut cmd = kubectl();
    cmd.args([
        "label",
        "namespace",
        namespace,
        "--overwrite",
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
        "pod-security.kubernetes.io/warn=restricted",
        "pod-security.kubernetes.io/warn-version=latest",
    ]);
    check(cmd, None);
}

#[test]
fn chart_crds_are_exact_copies_of_crds() {
    let root = repo_root();
    let names = |dir: &Path| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    let generated = names(root.join("crds").as_path());
    let shipped = names(root.join("charts/slipway/crds").as_path());
    assert!(!generated.is_empty(), "crds/ is empty");
    assert_eq!(
        shipped, generated,
        "charts/slipway/crds/ must hold exactly the files of crds/: run `make chart-crds`"
    );
    let differ: Vec<&String> = generated
        .iter()
        .filter(|name| {
            std::fs::read(root.join("crds").join(name)).unwrap()
                != std::fs::read(root.join("charts/slipway/crds").join(name)).unwrap()
        })
        .collect();
    assert!(
        differ.is_empty(),
        "charts/slipway/crds/ differs from crds/ for {differ:?}: run `make chart-crds`"
    );
}

#[test]
fn helm_lint_passes() {
    for extra in [&[][..], &["--values", ALL_OPTIONS][..]] {
        let mut cmd = helm();
        cmd.args(["lint", "--strict", CHART]).args(extra);
        let out = check(cmd, None);
        let stdout = text(&out.stdout);
        assert!(
            stdout.contains("1 chart(s) linted, 0 chart(s) failed"),
            "helm lint {extra:?}:\n{stdout}"
        );
    }
}

#[test]
fn default_render_runs_two_restricted_replicas_with_probes() {
    let docs = documents(&helm_template("slipway", "slipway-system", &[]));
    let expected: BTreeSet<String> = [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "Deployment",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(
        kinds(&docs),
        expected,
        "ServiceMonitor and PodDisruptionBudget are off by default"
    );

    let deployment = the(&docs, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args.get(..5),
        Some(
            &[
                "run",
                "--log-format",
                "json",
                "--admin-addr",
                "0.0.0.0:8080"
            ][..]
        ),
        "{args:?}"
    );
    assert!(
        args.contains(&"--leader-elect"),
        "two replicas need leader election: {args:?}"
    );
    assert!(
        container["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "POD_NAME"
                && e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"),
        "POD_NAME from the downward API: {}",
        container["env"]
    );
    assert_eq!(container["ports"][0]["name"], "admin");
    assert_eq!(container["ports"][0]["containerPort"], 8080);
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/live");
    assert_eq!(container["livenessProbe"]["httpGet"]["port"], "admin");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], "admin");
    assert!(container["resources"]["requests"]["cpu"].is_string());
    assert!(container["resources"]["limits"]["memory"].is_string());

    let sc = &container["securityContext"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["runAsUser"], 65532);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");

    let service = the(&docs, "Service");
    assert_eq!(service["spec"]["ports"][0]["name"], "metrics");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "admin");
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["selector"]["matchLabels"]
    );
}

#[test]
fn every_flag_the_chart_passes_is_one_slipway_run_knows() {
    let help = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["run", "--help"])
        .output()
        .expect("running slipway run --help");
    let help = text(&help.stdout);
    for extra in [&[][..], &["--values", ALL_OPTIONS][..]] {
        let docs = documents(&helm_template("slipway", "slipway-system", extra));
        let args = the(&docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .expect("args")
            .clone();
        assert_eq!(args[0], "run");
        for flag in args
            .iter()
            .filter_map(|a| a.as_str())
            .filter(|a| a.starts_with("--"))
        {
            assert!(
                help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
                "the chart passes {flag} ({extra:?}) but `slipway run --help` does not list it:\n{help}"
            );
        }
    }
}

#[test]
fn every_rbac_rule_says_why_and_none_is_broader_than_needed() {
    // A comment right above every rule of the template.
    let source = std::fs::read_to_string(repo_root().join("charts/slipway/templates/rbac.yaml"))
        .expect("charts/slipway/templates/rbac.yaml");
    let lines: Vec<&str> = source.lines().map(str::trim).collect();
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with("- apiGroups:") {
            assert!(
                i > 0 && lines[i - 1].starts_with('#'),
                "rbac.yaml line {}: the rule `{line}` has no comment saying why it is needed",
                i + 1
            );
        }
    }

    let docs = documents(&helm_template("slipway", "slipway-system", &[]));
    let mut rules = vec![];
    for doc in docs
        .iter()
        .filter(|d| kind(d) == "ClusterRole" || kind(d) == "Role")
    {
        rules.extend(doc["rules"].as_array().expect("rules").iter().cloned());
    }
    assert!(!rules.is_empty());
    let strings = |rule: &Value, field: &str| -> Vec<String> {
        rule[field]
            .as_array()
            .unwrap_or_else(|| panic!("rule without {field}: {rule}"))
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    for rule in &rules {
        let groups = strings(rule, "apiGroups");
        let resources = strings(rule, "resources");
        let verbs = strings(rule, "verbs");
        for s in groups.iter().chain(&resources).chain(&verbs) {
            assert!(!s.contains('*'), "wildcard in rule {rule}");
        }
        assert!(
            !groups.iter().any(|g| g == "rbac.authorization.k8s.io"),
            "the operator must not touch RBAC: {rule}"
        );
        for verb in ["escalate", "bind", "impersonate", "deletecollection"] {
            assert!(!verbs.iter().any(|v| v == verb), "{verb} in {rule}");
        }
        if resources
            .iter()
            .any(|r| r == "secrets" || r.starts_with("secrets/"))
        {
            assert_eq!(
                verbs,
                ["get", "list", "watch"],
                "Secrets are read-only for the operator: {rule}"
            );
        }
        assert!(
            rule.get("nonResourceURLs").is_none(),
            "no non-resource URLs: {rule}"
        );
    }
}

#[tokio::test]
async fn rendered_chart_passes_server_side_validation_and_pod_security_restricted() {
    let client = client_with_crds().await;
    let ns = TestNamespace::new(&client, "chart-render").await;
    enforce_restricted(&ns.name);
    let release = format!("slipway-{}", random_suffix());

    // Default values.
    let docs = documents(&helm_template(&release, &ns.name, &[]));
    let out = dry_run_apply(&ns.name, &docs);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        stdout.matches("(server dry run)").count(),
        docs.len(),
        "every object accepted:\n{stdout}"
    );
    assert!(
        !stderr.contains("PodSecurity"),
        "the Deployment's pods would violate Pod Security `restricted`:\n{stderr}"
    );

    // Enforcement applies to Pods, not Deployments: create (dry run) a Pod with the
    // Deployment's pod template in the `restricted` namespace. Its ServiceAccount must exist.
    let account = the(&docs, "ServiceAccount").clone();
    let mut cmd = kubectl();
    cmd.args(["apply", "-n", ns.name.as_str(), "-f", "-"]);
    let yaml = to_yaml(&[account]);
    check(cmd, Some(yaml.as_str()));
    let template = &the(&docs, "Deployment")["spec"]["template"];
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": "pod-security-check", "labels": template["metadata"]["labels"] },
        "spec": template["spec"],
    });
    let create_pod = |pod: &Value| {
        let mut cmd = kubectl();
        cmd.args([
            "create",
            "--dry-run=server",
            "-n",
            ns.name.as_str(),
            "-f",
            "-",
        ]);
        let yaml = to_yaml(std::slice::from_ref(pod));
        run(cmd, Some(yaml.as_str()))
    };
    let out = create_pod(&pod);
    assert!(
        out.status.success() && !text(&out.stderr).contains("PodSecurity"),
        "the operator pod is not admitted under Pod Security `restricted`:\n{}",
        text(&out.stderr)
    );
    // The control: the same pod allowing privilege escalation is rejected, so the check above
    // really ran under enforcement.
    let mut weakened = pod.clone();
    weakened["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = json!(true);
    let out = create_pod(&weakened);
    assert!(
        !out.status.success() && text(&out.stderr).contains("PodSecurity"),
        "Pod Security `restricted` is not enforced in {}; the check proves nothing:\n{}",
        ns.name,
        text(&out.stderr)
    );

    // Every option on. The ServiceMonitor CRD (Prometheus Operator) is not installed here:
    // the API server checks everything else, the ServiceMonitor is checked as rendered.
    let all = documents(&helm_template(
        &release,
        &ns.name,
        &["--values", ALL_OPTIONS],
    ));
    let (monitors, rest): (Vec<Value>, Vec<Value>) =
        all.into_iter().partition(|d| kind(d) == "ServiceMonitor");
    for wanted in [
        "PodDisruptionBudget",
        "Deployment",
        "Service",
        "ClusterRole",
    ] {
        assert!(
            kinds(&rest).contains(wanted),
            "all options: no {wanted} rendered"
        );
    }
    let out = dry_run_apply(&ns.name, &rest);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        stdout.matches("(server dry run)").count(),
        rest.len(),
        "every object accepted:\n{stdout}"
    );
    assert!(!stderr.contains("PodSecurity"), "{stderr}");

    assert_eq!(monitors.len(), 1, "all options: one ServiceMonitor");
    let monitor = &monitors[0];
    let service = the(&rest, "Service");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["metadata"]["namespace"], json!(ns.name));
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(
        monitor["spec"]["namespaceSelector"]["matchNames"],
        json!([ns.name])
    );
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], service["spec"]["ports"][0]["name"]);
    assert_eq!(endpoint["path"], "/metrics");
    assert_eq!(endpoint["interval"], "15s");
    let selector = monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("ServiceMonitor selector");
    for (key, value) in selector {
        assert_eq!(
            &service["metadata"]["labels"][key], value,
            "the ServiceMonitor selects the metrics Service by {key}"
        );
    }
}

#[test]
fn a_wrong_value_fails_helm_template_naming_it() {
    let values = std::env::temp_dir().join(format!("slipway-values-{}.yaml", random_suffix()));
    std::fs::write(&values, "replicaCount: \"two\"\n").unwrap();
    let values_arg = values.to_string_lossy().into_owned();
    let cases: [(&[&str], &str); 6] = [
        (&["--values", values_arg.as_str()], "replicaCount"),
        (&["--set", "operator.logFormat=xml"], "logFormat"),
        (&["--set", "image.pullPolicy=Sometimes"], "pullPolicy"),
        (&["--set", "replicas=2"], "replicas"),
        (&["--set", "serviceMonitor.interval=30 seconds"], "interval"),
        (
            &["--set", "podDisruptionBudget.maxUnavailable=half"],
            "maxUnavailable",
        ),
    ];
    let mut problems = vec![];
    for (args, key) in cases {
        let mut cmd = helm();
        cmd.args(["template", "slipway", CHART]).args(args);
        let out = run(cmd, None);
        let stderr = text(&out.stderr);
        if out.status.success() {
            problems.push(format!("helm template {args:?} succeeded"));
        } else if !stderr.contains("values don't meet the specifications of the schema")
            || !stderr.contains(key)
        {
            problems.push(format!(
                "helm template {args:?}: the error does not name {key}:\n{stderr}"
            ));
        }
    }
    let _ = std::fs::remove_file(values);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Cluster-scoped objects a test created, deleted when it ends (pass or fail).
struct ClusterScoped(Vec<String>);

impl Drop for ClusterScoped {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let mut cmd = kubectl();
        cmd.args(["delete", "--ignore-not-found", "--wait=false"])
            .args(self.0.iter());
        let out = run(cmd, None);
        if !out.status.success() {
            eprintln!("could not delete {:?}: {}", self.0, text(&out.stderr));
        }
    }
}

/// `kubectl auth can-i` as someone else: true for "yes", false for "no".
fn can_i(user: &str, args: &[&str]) -> bool {
    let mut cmd = kubectl();
    cmd.args(["auth", "can-i"])
        .args(args)
        .arg(format!("--as={user}"));
    let out = run(cmd, None);
    let answer = text(&out.stdout);
    match answer.split_whitespace().next() {
        Some("yes") => true,
        Some("no") => false,
        _ => panic!(
            "kubectl auth can-i {args:?} answered neither yes nor no: {answer}\n{}",
            text(&out.stderr)
        ),
    }
}

#[tokio::test]
async fn service_account_can_do_its_job_and_nothing_more() {
    let client = client_with_crds().await;
    let ns = TestNamespace::new(&client, "chart-rbac").await;
    let release = format!("slipway-rbac-{}", random_suffix());
    let rbac: Vec<Value> = documents(&helm_template(&release, &ns.name, &[]))
        .into_iter()
        .filter(|d| {
            matches!(
                kind(d),
                "ServiceAccount" | "ClusterRole" | "ClusterRoleBinding" | "Role" | "RoleBinding"
            )
        })
        .collect();
    let cluster_scoped: Vec<String> = rbac
        .iter()
        .filter(|d| kind(d).starts_with("Cluster"))
        .map(|d| {
            let name = d["metadata"]["name"].as_str().unwrap().to_string();
            assert!(
                name.contains(&release),
                "cluster-scoped {} {name} is not unique to this release",
                kind(d)
            );
            format!("{}/{name}", kind(d).to_lowercase())
        })
        .collect();
    assert_eq!(cluster_scoped.len(), 2, "a ClusterRole and its binding");
    let _cleanup = ClusterScoped(cluster_scoped);
    let mut cmd = kubectl();
    cmd.args(["apply", "-f", "-"]);
    let yaml = to_yaml(&rbac);
    check(cmd, Some(yaml.as_str()));

    let account = the(&rbac, "ServiceAccount")["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let user = format!("system:serviceaccount:{}:{account}", ns.name);
    let own = ns.name.as_str();
    // The leader-election Lease is named after the release (fullname).
    let lease = format!("leases.coordination.k8s.io/{release}");
    // RBAC takes effect once the authorizer's cache has the new bindings.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !can_i(
        &user,
        &[
            "patch",
            "releases.slipway.dev",
            "--subresource=status",
            "-n",
            "shop",
        ],
    ) {
        assert!(
            Instant::now() < deadline,
            "the chart's RBAC did not take effect within 30s"
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    let must: &[&[&str]] = &[
        &[
            "patch",
            "releases.slipway.dev",
            "--subresource=status",
            "-n",
            "shop",
        ],
        &[
            "patch",
            "environments.slipway.dev",
            "--subresource=status",
            "-n",
            "shop",
        ],
        &[
            "patch",
            "scaledworkers.slipway.dev",
            "--subresource=status",
            "-n",
            "shop",
        ],
        &["patch", "releases.slipway.dev", "-n", "shop"],
        &["watch", "releases.slipway.dev", "--all-namespaces"],
        &["watch", "environments.slipway.dev", "--all-namespaces"],
        &["watch", "scaledworkers.slipway.dev", "--all-namespaces"],
        &["create", "namespaces"],
        &["create", "jobs.batch", "-n", "shop"],
        &["watch", "jobs.batch", "--all-namespaces"],
        &["create", "cronjobs.batch", "-n", "shop"],
        &["patch", "deployments.apps", "-n", "shop"],
        &["delete", "deployments.apps", "-n", "shop"],
        &[
            "patch",
            "deployments.apps",
            "--subresource=scale",
            "-n",
            "shop",
        ],
        &["create", "services", "-n", "shop"],
        &["create", "ingresses.networking.k8s.io", "-n", "shop"],
        &[
            "create",
            "horizontalpodautoscalers.autoscaling",
            "-n",
            "shop",
        ],
        &["create", "controllerrevisions.apps", "-n", "shop"],
        &["create", "events.events.k8s.io", "-n", "shop"],
        &["patch", "events.events.k8s.io", "-n", "shop"],
        &["create", "leases.coordination.k8s.io", "-n", own],
        &["get", lease.as_str(), "-n", own],
        &["update", lease.as_str(), "-n", own],
        &["get", "secrets", "-n", "shop"],
        &["list", "secrets", "-n", "shop"],
    ];
    let must_not: &[&[&str]] = &[
        &["create", "secrets", "-n", "shop"],
        &["update", "secrets", "-n", "shop"],
        &["patch", "secrets", "-n", "shop"],
        &["delete", "secrets", "-n", "shop"],
        &["create", "secrets", "-n", own],
        &["patch", "secrets", "-n", own],
        &["delete", "secrets", "-n", own],
        &["deletecollection", "secrets", "-n", "shop"],
        &["create", "clusterroles.rbac.authorization.k8s.io"],
        &["create", "clusterrolebindings.rbac.authorization.k8s.io"],
        &["create", "roles.rbac.authorization.k8s.io", "-n", "shop"],
        &[
            "create",
            "rolebindings.rbac.authorization.k8s.io",
            "-n",
            own,
        ],
        &["bind", "clusterroles.rbac.authorization.k8s.io"],
        &["escalate", "clusterroles.rbac.authorization.k8s.io"],
        &["impersonate", "serviceaccounts", "-n", "shop"],
        &["*", "*", "--all-namespaces"],
        &["*", "*", "-n", "shop"],
        &["delete", "namespaces"],
        &["create", "pods", "-n", "shop"],
        &["create", "pods", "--subresource=exec", "-n", "shop"],
        &["create", "leases.coordination.k8s.io", "-n", "shop"],
        &[
            "update",
            "leases.coordination.k8s.io/another-lease",
            "-n",
            own,
        ],
        &["delete", lease.as_str(), "-n", own],
        &["delete", "customresourcedefinitions.apiextensions.k8s.io"],
    ];
    let mut wrong = vec![];
    for args in must {
        if !can_i(&user, args) {
            wrong.push(format!("cannot {args:?} (needs to)"));
        }
    }
    for args in must_not {
        if can_i(&user, args) {
            wrong.push(format!("can {args:?} (must not)"));
        }
    }
    assert!(
        wrong.is_empty(),
        "the chart's ServiceAccount {user}:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn argocd_health_checks_pass_their_lua_tests() {
    let lua = tool(
        "lua5.4",
        "install Lua 5.4 with `apt-get install -y lua5.4` (hack/deps does it)",
    );
    let mut cmd = Command::new(lua);
    cmd.current_dir(repo_root())
        .arg("tests/gitops/run-lua-tests.lua");
    let out = run(cmd, None);
    let stdout = text(&out.stdout);
    eprintln!("{stdout}{}", text(&out.stderr));
    let last = stdout.lines().next_back().unwrap_or_default();
    assert!(
        out.status.success() && last.ends_with(" passed, 0 failed"),
        "tests/gitops/run-lua-tests.lua failed ({}); last line: {last}",
        out.status
    );
    for phase in [
        "Pending",
        "AwaitingPromotion",
        "AwaitingApproval",
        "Migrating",
        "RollingOut",
        "Verifying",
        "Succeeded",
        "Failed",
        "RolledBack",
        "Frozen",
    ] {
        assert!(
            stdout.contains(&format!("release: phase {phase} ")),
            "no Lua case for Release phase {phase}"
        );
    }
    for other in ["scaledworker: ", "environment: "] {
        assert!(stdout.contains(other), "no Lua case for {other}");
    }
}

fn is_shell_script(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .map(|s| {
            let first = s.lines().next().unwrap_or_default();
            first.starts_with("#!") && (first.contains("bash") || first.ends_with("sh"))
        })
        .unwrap_or(false)
}

#[test]
fn scripts_pass_shellcheck() {
    let shellcheck = tool(
        "shellcheck",
        "install it with `apt-get install -y shellcheck` (hack/deps does it)",
    );
    let root = repo_root();
    let mut scripts: Vec<String> = std::fs::read_dir(root.join("hack"))
        .expect("hack/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && is_shell_script(p))
        .map(|p| {
            p.strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    scripts.sort();
    assert!(
        scripts.iter().any(|s| s == "hack/kind-e2e"),
        "hack/kind-e2e is missing: {scripts:?}"
    );
    scripts.extend(
        [
            "tests/testenv/up",
            "tests/testenv/down",
            "tests/testenv/build",
            "tests/brokers/up",
            "tests/brokers/down",
        ]
        .map(String::from),
    );
    let mut cmd = Command::new(shellcheck);
    cmd.current_dir(root)
        // Follow what the scripts source (tests/testenv/versions.sh).
        .args(["--external-sources", "--source-path=SCRIPTDIR"])
        .args(scripts.iter());
    let out = run(cmd, None);
    assert!(
        out.status.success(),
        "shellcheck {scripts:?}:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}
