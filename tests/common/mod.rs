//! Shared harness of the integration tests: a real API server, the CRDs, and one namespace per
//! test.
//!
//! When `KUBECONFIG` is set the tests use that cluster (a kind cluster, say); otherwise they
//! start the local control plane with `tests/testenv/up`, which prints the path of an admin
//! kubeconfig on its last line. Either way every test works in a namespace of its own that is
//! deleted when the test ends, pass or fail.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client, Config};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The kubeconfig the tests use: `$KUBECONFIG`, or the one `tests/testenv/up` prints.
pub fn kubeconfig_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Some(k) = std::env::var_os("KUBECONFIG").filter(|k| !k.is_empty()) {
            return PathBuf::from(k);
        }
        let up = repo_root().join("tests/testenv/up");
        eprintln!(
            "KUBECONFIG is not set: starting the local control plane with {}",
            up.display()
        );
        let out = std::process::Command::new(&up)
            .stderr(std::process::Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", up.display()));
        assert!(
            out.status.success(),
            "tests/testenv/up failed ({}); see its output above",
            out.status
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let last = stdout
            .lines()
            .last()
            .expect("tests/testenv/up printed no kubeconfig path")
            .trim();
        PathBuf::from(last)
    })
    .clone()
}

/// True when the cluster is the local control plane this test run owns (so tests may do
/// cluster-wide things such as removing the CRDs).
pub fn owns_cluster() -> bool {
    std::env::var("SLIPWAY_TESTENV_OWNED")
        .map(|v| v == "1")
        .unwrap_or(false)
}

/// A client for the test cluster.
/// The client configuration of [`kubeconfig_path`].
pub async fn config() -> Config {
    let path = kubeconfig_path();
    let kubeconfig =
        Kubeconfig::read_from(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

pub async fn client() -> Client {
    Client::try_from(config().await).expect("building a client")
}

/// A client with the Slipway CRDs installed (server-side apply; idempotent) and Established.
pub async fn client_with_crds() -> Client {
    let client = client().await;
    install_crds(&client).await;
    client
}

pub async fn install_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in slipway::api::crds() {
        let name = crd.metadata.name.clone().unwrap();
        crds.patch(
            &name,
            &PatchParams::apply("slipway-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("installing CRD {name}: {e}"));
        tokio::time::timeout(
            Duration::from_secs(30),
            await_condition(crds.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .unwrap_or_else(|_| panic!("CRD {name} not Established within 30s"))
        .unwrap();
    }
}

/// A namespace owned by one test, deleted when dropped.
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    pub async fn new(client: &Client, prefix: &str) -> TestNamespace {
        let name = format!("{prefix}-{}", random_suffix());
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": { "name": name, "labels": { "slipway.dev/test": "true" } }
        }))
        .unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
        TestNamespace { name }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let name = self.name.clone();
        block_on_from_drop(async move {
            let client = client().await;
            let _ = Api::<Namespace>::all(client.clone())
                .delete(&name, &DeleteParams::background())
                .await;
            // The operator that would run the Releases' cleanup finalizer may already be
            // gone; release them so the namespace really goes away.
            release_finalizers(&client, Some(&name)).await;
        });
    }
}

/// Runs `work` to completion from a `Drop`: Drop cannot await, and the test's runtime may be
/// shutting down, so it runs on a thread with a runtime of its own, joined before returning.
pub fn block_on_from_drop(work: impl std::future::Future<Output = ()> + Send + 'static) {
    let _ = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(work)
    })
    .join();
}

pub fn random_suffix() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        ^ (std::process::id() as u64) << 20
        ^ COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst) << 40;
    format!("{:x}", n & 0xff_ffff)
}

/// Parses every YAML document of a file (skipping empty ones).
pub fn yaml_documents(path: &Path) -> Vec<serde_json::Value> {
    use serde::Deserialize;
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            serde_json::Value::deserialize(d)
                .unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// Files in a folder with the given extension, sorted.
pub fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    v.sort();
    v
}

/// Polls `f` every 200 ms until it returns Some, or panics naming `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A `slipway run` process against the test cluster, killed when dropped.
pub struct Operator {
    pub child: std::process::Child,
    pub admin: std::net::SocketAddr,
    pub log: PathBuf,
}

impl Operator {
    /// Starts the operator binary with an admin server on a free loopback port.
    pub fn start(extra_args: &[&str]) -> Operator {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let admin: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = std::env::temp_dir().join(format!("slipway-operator-{}.log", random_suffix()));
        let file = std::fs::File::create(&log).unwrap();
        // SLIPWAY_OPERATOR_BIN runs another build (e.g. an older commit's, for an A/B bench).
        let bin = std::env::var("SLIPWAY_OPERATOR_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_slipway").to_string());
        let child = std::process::Command::new(bin)
            .arg("run")
            .arg("--admin-addr")
            .arg(admin.to_string())
            .args(extra_args)
            .env("KUBECONFIG", kubeconfig_path())
            // SLIPWAY_OPERATOR_RUST_LOG: other log directives for the operator under test.
            .env(
                "RUST_LOG",
                std::env::var("SLIPWAY_OPERATOR_RUST_LOG")
                    .unwrap_or_else(|_| "info,slipway=debug".into()),
            )
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("starting the slipway binary");
        Operator { child, admin, log }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.0 GET on loopback: (status code, body). None when nothing listens.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

/// Removes finalizers from Slipway Releases (in one namespace, or everywhere).
pub async fn release_finalizers(client: &Client, namespace: Option<&str>) {
    let api: Api<slipway::api::Release> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let Ok(list) = api.list(&Default::default()).await else {
        return;
    };
    for r in list.items {
        if r.metadata
            .finalizers
            .as_ref()
            .is_some_and(|f| !f.is_empty())
        {
            let ns = r.metadata.namespace.clone().unwrap_or_default();
            let name = r.metadata.name.clone().unwrap_or_default();
            let _ = Api::<slipway::api::Release>::namespaced(client.clone(), &ns)
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}})),
                )
                .await;
        }
    }
}

impl Operator {
    /// Sum of the operator's `/metrics` lines that start with `prefix` and contain any of
    /// `labels` (all lines when empty); 0 when `/metrics` does not answer.
    pub async fn metric(&self, prefix: &str, labels: &[&str]) -> u64 {
        let Some((_, body)) = http_get(self.admin, "/metrics").await else {
            return 0;
        };
        body.lines()
            .filter(|l| l.starts_with(prefix))
            .filter(|l| labels.is_empty() || labels.iter().any(|v| l.contains(v)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }
}

/// Established TCP connections of process `pid` to `port` (any address), from /proc: the
/// process's socket inodes matched against the kernel's TCP tables.
pub fn tcp_connections_to(pid: u32, port: u16) -> usize {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().to_string();
                    Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    let port_hex = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|t| t.lines().skip(1).map(String::from).collect::<Vec<_>>())
        .filter(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // local, remote, state (01 = ESTABLISHED), ..., inode (10th column)
            cols.len() > 9
                && cols[2].ends_with(&port_hex)
                && cols[3] == "01"
                && inodes.contains(cols[9])
        })
        .count()
}

/// A memory figure of a process in MiB from /proc/PID/status (`VmHWM` peak, `VmRSS` now);
/// 0 when the process or the line is missing.
pub fn proc_memory_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// Peak RSS (MiB) and CPU seconds (user + system) of a process, from /proc.
pub fn proc_stats(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields
        .get(11)
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
    (proc_memory_mib(pid, "VmHWM"), ticks / 100.0) // USER_HZ is 100 on Linux
}

fn start_with(args: &[String]) -> Operator {
    Operator::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// A test's namespace with an operator that watches only it. Test files add their own
/// helpers in `impl Fixture` blocks of their own.
pub struct Fixture {
    pub client: Client,
    pub ns: TestNamespace,
    pub op: Operator,
    /// The operator's arguments, for [`Fixture::restart_operator`].
    op_args: Vec<String>,
}

impl Fixture {
    pub async fn new(prefix: &str) -> Fixture {
        Fixture::with_args(prefix, &[]).await
    }

    /// Like [`Fixture::new`], the operator started with `extra_args` as well.
    pub async fn with_args(prefix: &str, extra_args: &[&str]) -> Fixture {
        let client = client_with_crds().await;
        let ns = TestNamespace::new(&client, prefix).await;
        let op_args: Vec<String> = ["--namespace", ns.name.as_str()]
            .iter()
            .chain(extra_args)
            .map(|a| a.to_string())
            .collect();
        let op = start_with(&op_args);
        Fixture {
            client,
            ns,
            op,
            op_args,
        }
    }

    /// Kills the operator (SIGKILL, no chance to clean up) and starts it again with the same
    /// arguments.
    pub fn restart_operator(&mut self) {
        self.op.child.kill().unwrap();
        self.op.child.wait().unwrap();
        self.op = start_with(&self.op_args);
    }

    /// An Api over the test namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }
}
