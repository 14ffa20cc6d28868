//! Renders a [`RevisionPlan`] into Kubernetes objects.
//!
//! Every function here is pure: it takes the platform-neutral plan plus a [`Target`]
//! (namespace and owning Release) and returns k8s-openapi objects ready for server-side apply.
//! Nothing talks to the API server.
//!
//! Conventions shared by every object:
//!
//! - **Names.** Deployment, Service, Ingress and HPA of a service are `"{release}-{service}"`
//!   ([`workload_name`]); a CronJob is `"{release}-{job}"` ([`cron_job_name`]); the migration
//!   Job is `"{release}-migrate-{revision}-{token}"` ([`migration_job_name`]). Names are
//!   DNS-1123 labels: when the release name does not fit (or is not a DNS-1123 label, e.g. it
//!   contains dots) its part is sanitised, truncated and followed by a short hash of the full
//!   release name, so two long release names never share an object.
//! - **Labels.** The `app.kubernetes.io/*` recommended labels plus `slipway.dev/release`
//!   ([`labels`]); pod templates and Jobs also carry `slipway.dev/revision`
//!   ([`pod_labels`]). Selectors use only the stable subset ([`selector_labels`]) because a
//!   Deployment's selector is immutable.
//! - **Ownership.** Every object carries the Target's owner reference, forced to
//!   `controller: true, blockOwnerDeletion: true`.
//! - **Drift detection.** Deployments, Services, Ingresses, HPAs and CronJobs carry
//!   [`PLAN_HASH_ANNOTATION`]: a hash of the rendered object without that annotation. The
//!   caller compares the observed annotation with the desired one ([`plan_hash`]) to skip
//!   writes that would change nothing.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, Job, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, LocalObjectReference, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SecretKeySelector, Service, ServicePort,
    ServiceSpec,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::api::Resources;
use crate::release::plan::{
    EnvPlan, HealthPlan, JobPlan, MigrationPlan, ReplicaPolicy, RevisionPlan, ServicePlan,
};

/// `app.kubernetes.io/name`: the app (links Releases of one app across Environments).
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
/// `app.kubernetes.io/instance`: the Release name.
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
/// `app.kubernetes.io/component`: the service or job name, or [`MIGRATION_COMPONENT`].
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
/// `app.kubernetes.io/managed-by`: always [`MANAGED_BY`].
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// `app.kubernetes.io/version`: the revision's version, sanitised by [`label_value`].
pub const LABEL_VERSION: &str = "app.kubernetes.io/version";
/// `slipway.dev/release`: the Release name.
pub const LABEL_RELEASE: &str = "slipway.dev/release";
/// `slipway.dev/revision`: the revision number (pod templates and Jobs only; also an
/// annotation on the migration Job).
pub const LABEL_REVISION: &str = "slipway.dev/revision";
/// Value of [`LABEL_MANAGED_BY`].
pub const MANAGED_BY: &str = "slipway";
/// Component label value of the migration Job.
pub const MIGRATION_COMPONENT: &str = "migration";
/// Annotation holding the hash of the rendered object, see [`plan_hash`].
pub const PLAN_HASH_ANNOTATION: &str = "slipway.dev/plan-hash";
/// Annotation on an Ingress: `"true"` when the service is exposed outside the cluster.
pub const EXTERNAL_ANNOTATION: &str = "slipway.dev/external";

/// Longest DNS-1123 label, and so the longest Job/Service/Deployment name rendered here.
pub const MAX_NAME_LEN: usize = 63;
/// Longest CronJob name the API server accepts (it appends an 11-character suffix to the
/// Jobs it creates).
pub const MAX_CRON_JOB_NAME_LEN: usize = 52;
/// Longest label value.
const MAX_LABEL_VALUE_LEN: usize = 63;
/// Hex digits of the short tokens in names and label values.
const TOKEN_LEN: usize = 5;
/// `initialDelaySeconds` of the liveness probe, so that a slow start is not a restart loop.
pub const LIVENESS_INITIAL_DELAY_SECONDS: i32 = 10;
/// Target average CPU utilisation (percent of the request) of every HPA.
pub const HPA_CPU_UTILIZATION: i32 = 70;
/// ReplicaSets (Deployments) and finished Jobs (CronJobs) kept for inspection.
const HISTORY_LIMIT: i32 = 3;

/// Where rendered objects go: their namespace and owner.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    /// Namespace of every object (the Release's namespace).
    pub namespace: String,
    /// Owner reference to the Release. Rendering forces `controller` and
    /// `blockOwnerDeletion` to true whatever this value says.
    pub owner: OwnerReference,
}

// ---------------------------------------------------------------------------------------------
// Hashing and names
// ---------------------------------------------------------------------------------------------

/// 64-bit FNV-1a of `bytes`: tiny, dependency-free and stable across builds and platforms
/// (unlike `std`'s `DefaultHasher`), which is what persisted names and annotations need.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME))
}

/// FNV-1a over several fields, each followed by a NUL so that `("ab", "c")` and `("a", "bc")`
/// differ.
fn fnv_fields(fields: &[&str]) -> u64 {
    let mut bytes = Vec::new();
    for f in fields {
        bytes.extend_from_slice(f.as_bytes());
        bytes.push(0);
    }
    fnv1a64(&bytes)
}

/// The low [`TOKEN_LEN`] hex digits of a hash (folded so that the high bits count too).
fn token(h: u64) -> String {
    format!("{:05x}", (h ^ (h >> 32)) & 0xf_ffff)
}

/// True when `s` is a DNS-1123 label: 1 to 63 of `[a-z0-9-]`, alphanumeric at both ends.
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Lowercases `s` and turns every character that is not `[a-z0-9-]` into `-`.
fn dns_chars(s: &str) -> String {
    s.chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// The first `max` characters of an ASCII string, without leading or trailing `-`.
fn head(s: &str, max: usize) -> &str {
    s[..s.len().min(max)].trim_matches('-')
}

/// `"{release}{suffix}"` as a DNS-1123 label of at most `max` characters. `suffix` must be a
/// valid tail (starting with `-`). When the release does not fit as is, its part becomes a
/// sanitised, truncated prefix followed by `-` and a token of the full release name.
fn fit_name(release: &str, suffix: &str, max: usize) -> String {
    let plain = format!("{release}{suffix}");
    if plain.len() <= max && is_dns_label(&plain) {
        return plain;
    }
    let tok = token(fnv1a64(release.as_bytes()));
    let budget = max.saturating_sub(suffix.len() + TOKEN_LEN + 1);
    let clean = dns_chars(release);
    match head(&clean, budget) {
        "" => format!("{tok}{suffix}"),
        h => format!("{h}-{tok}{suffix}"),
    }
}

/// Name of the Deployment, Service, Ingress and HPA of a service: `"{release}-{service}"`,
/// at most 63 characters.
///
/// A Service name must also start with a letter (DNS-1035); a release name starting with a
/// digit therefore yields a name the API server refuses for Services.
pub fn workload_name(release: &str, service: &str) -> String {
    fit_name(release, &format!("-{service}"), MAX_NAME_LEN)
}

/// Name of the CronJob of a scheduled job: `"{release}-{job}"`, at most 52 characters (the
/// API server's CronJob limit).
pub fn cron_job_name(release: &str, job: &str) -> String {
    fit_name(release, &format!("-{job}"), MAX_CRON_JOB_NAME_LEN)
}

/// Name of the migration Job of one attempt: `"{release}-migrate-{revision}-{token}"`, where
/// `token` is 5 hex digits of an FNV-1a hash of `(release, revision, attempt_key)`.
///
/// Deterministic, so the caller can find the Job of an attempt again after a restart; a new
/// `attempt_key` (e.g. a retry requested by the user) gives a new Job. At most 63 characters
/// and a DNS-1123 label: the release part is sanitised and truncated when needed (the token
/// still covers the full release name).
pub fn migration_job_name(release: &str, revision: i64, attempt_key: &str) -> String {
    let rev = revision.to_string();
    let tok = token(fnv_fields(&[release, &rev, attempt_key]));
    let suffix = format!("-migrate-{rev}-{tok}");
    let plain = format!("{release}{suffix}");
    if plain.len() <= MAX_NAME_LEN && is_dns_label(&plain) {
        return plain;
    }
    let clean = dns_chars(release);
    match head(&clean, MAX_NAME_LEN.saturating_sub(suffix.len())) {
        "" => format!("m{suffix}").chars().take(MAX_NAME_LEN).collect(),
        h => format!("{h}{suffix}"),
    }
}

/// True when `s` is a valid label value: at most 63 of `[A-Za-z0-9-_.]`, alphanumeric at both
/// ends, or empty.
fn is_label_value(s: &str) -> bool {
    let edge_ok = |c: Option<char>| c.is_none_or(|c| c.is_ascii_alphanumeric());
    s.len() <= MAX_LABEL_VALUE_LEN
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && edge_ok(s.chars().next())
        && edge_ok(s.chars().last())
}

/// `s` as a label value. A valid value is returned unchanged; otherwise invalid characters
/// become `-`, the result is truncated and a token of the original string is appended, so
/// distinct inputs stay distinct (e.g. version `1.2.3+build.7` becomes `1.2.3-build.7-xxxxx`).
///
/// Callers that select by label (e.g. listing a Release's pods) must pass values through this
/// function too.
pub fn label_value(s: &str) -> String {
    if is_label_value(s) {
        return s.to_string();
    }
    let clean: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let tok = token(fnv1a64(s.as_bytes()));
    let budget = MAX_LABEL_VALUE_LEN - TOKEN_LEN - 1;
    let h = clean[..clean.len().min(budget)].trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if h.is_empty() {
        tok
    } else {
        format!("{h}-{tok}")
    }
}

// ---------------------------------------------------------------------------------------------
// Labels and metadata
// ---------------------------------------------------------------------------------------------

/// The stable labels a Deployment and its Service select on: instance, component and
/// `slipway.dev/release`. Never the version or revision: a Deployment's selector is immutable.
pub fn selector_labels(plan: &RevisionPlan, component: &str) -> BTreeMap<String, String> {
    let release = label_value(&plan.release);
    BTreeMap::from([
        (LABEL_INSTANCE.to_string(), release.clone()),
        (LABEL_COMPONENT.to_string(), label_value(component)),
        (LABEL_RELEASE.to_string(), release),
    ])
}

/// The labels of every rendered object: [`selector_labels`] plus name, managed-by and version.
pub fn labels(plan: &RevisionPlan, component: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(plan, component);
    l.insert(LABEL_NAME.into(), label_value(&plan.app));
    l.insert(LABEL_MANAGED_BY.into(), MANAGED_BY.into());
    l.insert(LABEL_VERSION.into(), label_value(&plan.version));
    l
}

/// The labels of pod templates and Jobs: [`labels`] plus `slipway.dev/revision`.
pub fn pod_labels(plan: &RevisionPlan, component: &str) -> BTreeMap<String, String> {
    let mut l = labels(plan, component);
    l.insert(LABEL_REVISION.into(), plan.revision.to_string());
    l
}

/// Object metadata: name, namespace, labels, annotations and the controller owner reference.
fn meta(
    name: String,
    t: &Target,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
) -> ObjectMeta {
    let mut owner = t.owner.clone();
    owner.controller = Some(true);
    owner.block_owner_deletion = Some(true);
    ObjectMeta {
        name: Some(name),
        namespace: Some(t.namespace.clone()),
        labels: Some(labels),
        annotations: (!annotations.is_empty()).then_some(annotations),
        owner_references: Some(vec![owner]),
        ..Default::default()
    }
}

/// The [`PLAN_HASH_ANNOTATION`] value an object should carry: 16 hex digits of FNV-1a over its
/// JSON with that annotation removed. Covers metadata (labels, owner) and spec alike, so any
/// change that an apply would make changes the hash, and nothing else does.
pub fn plan_hash<K>(obj: &K) -> String
where
    K: k8s_openapi::Metadata<Ty = ObjectMeta> + serde::Serialize + Clone,
{
    let mut copy = obj.clone();
    let meta = copy.metadata_mut();
    if let Some(a) = meta.annotations.as_mut() {
        a.remove(PLAN_HASH_ANNOTATION);
        if a.is_empty() {
            meta.annotations = None;
        }
    }
    let json = serde_json::to_string(&copy).expect("k8s-openapi objects always serialise");
    format!("{:016x}", fnv1a64(json.as_bytes()))
}

/// Sets [`PLAN_HASH_ANNOTATION`] on a rendered object.
fn with_plan_hash<K>(mut obj: K) -> K
where
    K: k8s_openapi::Metadata<Ty = ObjectMeta> + serde::Serialize + Clone,
{
    let hash = plan_hash(&obj);
    obj.metadata_mut()
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(PLAN_HASH_ANNOTATION.into(), hash);
    obj
}

/// The [`PLAN_HASH_ANNOTATION`] of an observed object's metadata, if any.
pub fn observed_plan_hash(meta: &ObjectMeta) -> Option<&str> {
    meta.annotations
        .as_ref()?
        .get(PLAN_HASH_ANNOTATION)
        .map(String::as_str)
}

/// Serialises an object for server-side apply, making sure `apiVersion` and `kind` are set.
pub fn to_apply<K: k8s_openapi::Resource + serde::Serialize>(obj: &K) -> serde_json::Value {
    let mut v = serde_json::to_value(obj).expect("k8s-openapi objects always serialise");
    if let Some(m) = v.as_object_mut() {
        m.insert("apiVersion".into(), K::API_VERSION.into());
        m.insert("kind".into(), K::KIND.into());
    }
    v
}

// ---------------------------------------------------------------------------------------------
// Pods
// ---------------------------------------------------------------------------------------------

/// Container env. Plain values stay values; `secretKeyRef` sources become
/// `valueFrom.secretKeyRef`. `azureKeyVault` and `awsSecretsManager` sources are **skipped**:
/// they cannot be resolved on Kubernetes and the caller rejects plans holding them before
/// rendering.
fn env_vars(env: &[EnvPlan]) -> Option<Vec<EnvVar>> {
    let vars: Vec<EnvVar> = env
        .iter()
        .filter_map(|e| match &e.secret {
            None => Some(EnvVar {
                name: e.name.clone(),
                value: e.value.clone(),
                value_from: None,
            }),
            Some(s) => s.secret_key_ref.as_ref().map(|r| EnvVar {
                name: e.name.clone(),
                value: None,
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: r.name.clone(),
                        key: r.key.clone(),
                        optional: None,
                    }),
                    ..Default::default()
                }),
            }),
        })
        .collect();
    (!vars.is_empty()).then_some(vars)
}

/// Requests and limits (the same values) from the set CPU and memory; none when neither is set.
fn resources(r: &Resources) -> Option<ResourceRequirements> {
    let mut q = BTreeMap::new();
    if let Some(cpu) = &r.cpu {
        q.insert("cpu".to_string(), Quantity(cpu.clone()));
    }
    if let Some(memory) = &r.memory {
        q.insert("memory".to_string(), Quantity(memory.clone()));
    }
    (!q.is_empty()).then(|| ResourceRequirements {
        limits: Some(q.clone()),
        requests: Some(q),
        ..Default::default()
    })
}

/// An HTTP GET probe from the health plan.
fn probe(h: &HealthPlan, initial_delay_seconds: Option<i32>) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(h.path.clone()),
            port: IntOrString::Int(h.port),
            ..Default::default()
        }),
        initial_delay_seconds,
        period_seconds: Some(h.period_seconds),
        failure_threshold: Some(h.failure_threshold),
        ..Default::default()
    }
}

/// One container; empty `command`/`args` are omitted so the image's entrypoint applies.
fn container(
    name: &str,
    image: &str,
    command: &[String],
    args: &[String],
    env: &[EnvPlan],
    res: &Resources,
) -> Container {
    Container {
        name: name.to_string(),
        image: Some(image.to_string()),
        command: (!command.is_empty()).then(|| command.to_vec()),
        args: (!args.is_empty()).then(|| args.to_vec()),
        env: env_vars(env),
        resources: resources(res),
        ..Default::default()
    }
}

/// A pod spec around one container: the plan's pull secret, no service account token (apps
/// never talk to the API server), and no `runAsNonRoot` (user images may run as root).
fn pod_spec(plan: &RevisionPlan, c: Container, restart_policy: Option<&str>) -> PodSpec {
    PodSpec {
        containers: vec![c],
        image_pull_secrets: plan
            .pull_secret
            .as_ref()
            .map(|name| vec![LocalObjectReference { name: name.clone() }]),
        automount_service_account_token: Some(false),
        restart_policy: restart_policy.map(str::to_string),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Objects
// ---------------------------------------------------------------------------------------------

/// The Deployment of a service.
///
/// `replicas` is the count for [`ReplicaPolicy::Fixed`], the minimum for
/// [`ReplicaPolicy::Autoscaled`], and **omitted** for [`ReplicaPolicy::External`] so that
/// server-side apply never takes the field from the ScaledWorker. Rolling updates never drop
/// below the desired count (`maxUnavailable: 0`, `maxSurge: 25%`); `progressDeadlineSeconds`
/// is the caller's rollout deadline. Probes come from the health plan (readiness as is,
/// liveness with [`LIVENESS_INITIAL_DELAY_SECONDS`]).
pub fn deployment(
    plan: &RevisionPlan,
    svc: &ServicePlan,
    t: &Target,
    progress_deadline_seconds: i32,
) -> Deployment {
    let mut c = container(
        &svc.name,
        &svc.image,
        &svc.command,
        &svc.args,
        &svc.env,
        &svc.resources,
    );
    c.ports = (!svc.ports.is_empty()).then(|| {
        svc.ports
            .iter()
            .map(|p| ContainerPort {
                container_port: p.port,
                name: Some(p.name.clone()),
                protocol: Some("TCP".into()),
                ..Default::default()
            })
            .collect()
    });
    c.readiness_probe = svc.health.as_ref().map(|h| probe(h, None));
    c.liveness_probe = svc
        .health
        .as_ref()
        .map(|h| probe(h, Some(LIVENESS_INITIAL_DELAY_SECONDS)));
    let replicas = match svc.replicas {
        ReplicaPolicy::Fixed { count } => Some(count),
        ReplicaPolicy::Autoscaled { min, .. } => Some(min),
        ReplicaPolicy::External => None,
    };
    with_plan_hash(Deployment {
        metadata: meta(
            workload_name(&plan.release, &svc.name),
            t,
            labels(plan, &svc.name),
            BTreeMap::new(),
        ),
        spec: Some(DeploymentSpec {
            replicas,
            selector: LabelSelector {
                match_labels: Some(selector_labels(plan, &svc.name)),
                match_expressions: None,
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::String("25%".into())),
                }),
            }),
            progress_deadline_seconds: Some(progress_deadline_seconds),
            revision_history_limit: Some(HISTORY_LIMIT),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels(plan, &svc.name)),
                    ..Default::default()
                }),
                spec: Some(pod_spec(plan, c, None)),
            },
            ..Default::default()
        }),
        status: None,
    })
}

/// The ClusterIP Service of a service, or `None` when it has no ports. Each port is exposed
/// under its own number and name; the selector is the Deployment's.
pub fn service(plan: &RevisionPlan, svc: &ServicePlan, t: &Target) -> Option<Service> {
    if svc.ports.is_empty() {
        return None;
    }
    Some(with_plan_hash(Service {
        metadata: meta(
            workload_name(&plan.release, &svc.name),
            t,
            labels(plan, &svc.name),
            BTreeMap::new(),
        ),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(plan, &svc.name)),
            ports: Some(
                svc.ports
                    .iter()
                    .map(|p| ServicePort {
                        name: Some(p.name.clone()),
                        port: p.port,
                        target_port: Some(IntOrString::Int(p.port)),
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        status: None,
    }))
}

/// The `networking.k8s.io/v1` Ingress of a service, or `None` without an ingress plan: one
/// rule (host optional), a `Prefix` path, backed by the service's Service on the planned port
/// number. [`EXTERNAL_ANNOTATION`] says whether it is meant to be public; no
/// `ingressClassName` is set, so the cluster's default IngressClass applies.
pub fn ingress(plan: &RevisionPlan, svc: &ServicePlan, t: &Target) -> Option<Ingress> {
    let ing = svc.ingress.as_ref()?;
    let name = workload_name(&plan.release, &svc.name);
    Some(with_plan_hash(Ingress {
        metadata: meta(
            name.clone(),
            t,
            labels(plan, &svc.name),
            BTreeMap::from([(EXTERNAL_ANNOTATION.to_string(), ing.external.to_string())]),
        ),
        spec: Some(IngressSpec {
            rules: Some(vec![IngressRule {
                host: ing.host.clone(),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some(ing.path.clone()),
                        path_type: "Prefix".into(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name,
                                port: Some(ServiceBackendPort {
                                    number: Some(ing.port),
                                    name: None,
                                }),
                            }),
                            resource: None,
                        },
                    }],
                }),
            }]),
            ..Default::default()
        }),
        status: None,
    }))
}

/// The `autoscaling/v2` HorizontalPodAutoscaler of a service, only for
/// [`ReplicaPolicy::Autoscaled`]: between min and max on [`HPA_CPU_UTILIZATION`]% average CPU.
/// Utilisation is relative to the CPU request, so the HPA reports `FailedGetResourceMetric`
/// when the service has no `resources.cpu`.
pub fn hpa(plan: &RevisionPlan, svc: &ServicePlan, t: &Target) -> Option<HorizontalPodAutoscaler> {
    let ReplicaPolicy::Autoscaled { min, max } = svc.replicas else {
        return None;
    };
    let name = workload_name(&plan.release, &svc.name);
    Some(with_plan_hash(HorizontalPodAutoscaler {
        metadata: meta(name.clone(), t, labels(plan, &svc.name), BTreeMap::new()),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name,
            },
            min_replicas: Some(min),
            max_replicas: max,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(HPA_CPU_UTILIZATION),
                        ..Default::default()
                    },
                }),
                ..Default::default()
            }]),
            behavior: None,
        }),
        status: None,
    }))
}

/// The `batch/v1` CronJob of a scheduled job: schedule and time zone from the plan,
/// `concurrencyPolicy: Forbid`, 3 successful and 3 failed Jobs kept. Each Job retries
/// `retries` times (`backoffLimit`) within `timeout_seconds` (`activeDeadlineSeconds`), with
/// `restartPolicy: Never`. The job template carries [`pod_labels`].
pub fn cron_job(plan: &RevisionPlan, job: &JobPlan, t: &Target) -> CronJob {
    let c = container(
        &job.name,
        &job.image,
        &job.command,
        &job.args,
        &job.env,
        &job.resources,
    );
    let run_labels = pod_labels(plan, &job.name);
    with_plan_hash(CronJob {
        metadata: meta(
            cron_job_name(&plan.release, &job.name),
            t,
            labels(plan, &job.name),
            BTreeMap::new(),
        ),
        spec: Some(CronJobSpec {
            schedule: job.schedule.clone(),
            time_zone: job.time_zone.clone(),
            concurrency_policy: Some("Forbid".into()),
            successful_jobs_history_limit: Some(HISTORY_LIMIT),
            failed_jobs_history_limit: Some(HISTORY_LIMIT),
            job_template: JobTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(run_labels.clone()),
                    ..Default::default()
                }),
                spec: Some(JobSpec {
                    backoff_limit: Some(job.retries),
                    active_deadline_seconds: job.timeout_seconds.map(i64::from),
                    template: PodTemplateSpec {
                        metadata: Some(ObjectMeta {
                            labels: Some(run_labels),
                            ..Default::default()
                        }),
                        spec: Some(pod_spec(plan, c, Some("Never"))),
                    },
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    })
}

/// The `batch/v1` migration Job of one attempt, named by [`migration_job_name`]:
/// `backoffLimit: retries`, `activeDeadlineSeconds: timeout_seconds`, `restartPolicy: Never`,
/// component [`MIGRATION_COMPONENT`] and a `slipway.dev/revision` annotation.
///
/// There is deliberately no `ttlSecondsAfterFinished`: the caller records the outcome before
/// it deletes the Job. No plan-hash annotation either: a Job's pod template is immutable, so a
/// different plan means a different attempt (a new `attempt_key`), never an update.
pub fn migration_job(
    plan: &RevisionPlan,
    mig: &MigrationPlan,
    t: &Target,
    attempt_key: &str,
) -> Job {
    let c = container(
        MIGRATION_COMPONENT,
        &mig.image,
        &mig.command,
        &mig.args,
        &mig.env,
        &mig.resources,
    );
    let run_labels = pod_labels(plan, MIGRATION_COMPONENT);
    Job {
        metadata: meta(
            migration_job_name(&plan.release, plan.revision, attempt_key),
            t,
            run_labels.clone(),
            BTreeMap::from([(LABEL_REVISION.to_string(), plan.revision.to_string())]),
        ),
        spec: Some(JobSpec {
            backoff_limit: Some(mig.retries),
            active_deadline_seconds: Some(i64::from(mig.timeout_seconds)),
            ttl_seconds_after_finished: None,
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(run_labels),
                    ..Default::default()
                }),
                spec: Some(pod_spec(plan, c, Some("Never"))),
            },
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AzureKeyVaultRef, SecretKeyRef, SecretSource};
    use crate::release::plan::{IngressPlan, PortPlan};

    fn target() -> Target {
        Target {
            namespace: "shop-dev".into(),
            owner: OwnerReference {
                api_version: "slipway.dev/v1alpha1".into(),
                kind: "Release".into(),
                name: "shop".into(),
                uid: "0000-1111".into(),
                controller: None,
                block_owner_deletion: None,
            },
        }
    }

    fn web(replicas: ReplicaPolicy) -> ServicePlan {
        ServicePlan {
            name: "web".into(),
            image: "registry.example/shop/web:1.2.3".into(),
            command: vec![],
            args: vec!["--serve".into()],
            ports: vec![
                PortPlan {
                    name: "http".into(),
                    port: 8080,
                },
                PortPlan {
                    name: "metrics".into(),
                    port: 9090,
                },
            ],
            ingress: Some(IngressPlan {
                external: true,
                host: Some("shop.example".into()),
                path: "/".into(),
                port: 8080,
            }),
            replicas,
            resources: Resources {
                cpu: Some("250m".into()),
                memory: Some("256Mi".into()),
            },
            env: vec![
                EnvPlan {
                    name: "MODE".into(),
                    value: Some("dev".into()),
                    secret: None,
                },
                EnvPlan {
                    name: "DB_PASSWORD".into(),
                    value: None,
                    secret: Some(SecretSource {
                        secret_key_ref: Some(SecretKeyRef {
                            name: "db".into(),
                            key: "password".into(),
                        }),
                        ..Default::default()
                    }),
                },
                EnvPlan {
                    name: "VAULTED".into(),
                    value: None,
                    secret: Some(SecretSource {
                        azure_key_vault: Some(AzureKeyVaultRef {
                            vault_url: "https://kv.vault.azure.net".into(),
                            secret_name: "x".into(),
                        }),
                        ..Default::default()
                    }),
                },
            ],
            health: Some(HealthPlan {
                path: "/healthz".into(),
                port: 8080,
                period_seconds: 7,
                failure_threshold: 4,
            }),
        }
    }

    fn worker() -> ServicePlan {
        ServicePlan {
            name: "worker".into(),
            image: "registry.example/shop/worker:1.2.3".into(),
            command: vec!["worker".into()],
            args: vec![],
            ports: vec![],
            ingress: None,
            replicas: ReplicaPolicy::External,
            resources: Resources::default(),
            env: vec![],
            health: None,
        }
    }

    fn nightly() -> JobPlan {
        JobPlan {
            name: "nightly".into(),
            image: "registry.example/shop/jobs:1.2.3".into(),
            command: vec!["report".into()],
            args: vec![],
            schedule: "0 2 * * *".into(),
            time_zone: Some("Europe/London".into()),
            timeout_seconds: Some(600),
            retries: 2,
            resources: Resources {
                cpu: None,
                memory: Some("128Mi".into()),
            },
            env: vec![],
        }
    }

    fn migration() -> MigrationPlan {
        MigrationPlan {
            image: "registry.example/shop/migrate:1.2.3".into(),
            command: vec!["migrate".into()],
            args: vec![],
            timeout_seconds: 300,
            retries: 1,
            resources: Resources::default(),
            env: vec![],
        }
    }

    fn plan() -> RevisionPlan {
        RevisionPlan {
            release: "shop".into(),
            app: "shop".into(),
            version: "1.2.3+build.7".into(),
            revision: 4,
            services: vec![web(ReplicaPolicy::Fixed { count: 2 }), worker()],
            jobs: vec![nightly()],
            migration: Some(migration()),
            pull_secret: Some("regcred".into()),
        }
    }

    fn container_of(d: &Deployment) -> &Container {
        &d.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
    }

    fn dns_label(s: &str) -> bool {
        is_dns_label(s)
    }

    #[test]
    fn fnv1a64_matches_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn replicas_follow_the_policy() {
        let cases = [
            ("fixed", ReplicaPolicy::Fixed { count: 3 }, Some(3)),
            (
                "autoscaled",
                ReplicaPolicy::Autoscaled { min: 2, max: 5 },
                Some(2),
            ),
            ("external", ReplicaPolicy::External, None),
        ];
        for (case, policy, want) in cases {
            let d = deployment(&plan(), &web(policy), &target(), 600);
            assert_eq!(d.spec.as_ref().unwrap().replicas, want, "{case}");
            let json = to_apply(&d);
            assert_eq!(
                json["spec"].get("replicas").is_some(),
                want.is_some(),
                "{case}: replicas present in the apply body"
            );
        }
    }

    #[test]
    fn deployment_spec_settings() {
        let d = deployment(
            &plan(),
            &web(ReplicaPolicy::Fixed { count: 2 }),
            &target(),
            420,
        );
        let spec = d.spec.as_ref().unwrap();
        assert_eq!(d.metadata.name.as_deref(), Some("shop-web"));
        assert_eq!(d.metadata.namespace.as_deref(), Some("shop-dev"));
        assert_eq!(spec.progress_deadline_seconds, Some(420));
        assert_eq!(spec.revision_history_limit, Some(3));
        let ru = spec
            .strategy
            .as_ref()
            .unwrap()
            .rolling_update
            .as_ref()
            .unwrap();
        assert_eq!(ru.max_unavailable, Some(IntOrString::Int(0)));
        assert_eq!(ru.max_surge, Some(IntOrString::String("25%".into())));
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert!(pod.security_context.is_none(), "runAsNonRoot is not forced");
        assert_eq!(
            pod.image_pull_secrets,
            Some(vec![LocalObjectReference {
                name: "regcred".into()
            }])
        );
        let c = container_of(&d);
        assert_eq!(c.name, "web");
        assert_eq!(c.image.as_deref(), Some("registry.example/shop/web:1.2.3"));
        assert_eq!(c.command, None);
        assert_eq!(c.args, Some(vec!["--serve".to_string()]));
        let ports: Vec<_> = c
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| (p.name.as_deref().unwrap(), p.container_port))
            .collect();
        assert_eq!(ports, [("http", 8080), ("metrics", 9090)]);
        let r = c.resources.as_ref().unwrap();
        for map in [r.requests.as_ref().unwrap(), r.limits.as_ref().unwrap()] {
            assert_eq!(map["cpu"], Quantity("250m".into()));
            assert_eq!(map["memory"], Quantity("256Mi".into()));
        }
    }

    #[test]
    fn every_object_is_owned_by_the_release_as_controller() {
        let p = plan();
        let t = target();
        let svc = web(ReplicaPolicy::Autoscaled { min: 1, max: 3 });
        let metas = [
            deployment(&p, &svc, &t, 600).metadata,
            service(&p, &svc, &t).unwrap().metadata,
            ingress(&p, &svc, &t).unwrap().metadata,
            hpa(&p, &svc, &t).unwrap().metadata,
            cron_job(&p, &nightly(), &t).metadata,
            migration_job(&p, &migration(), &t, "a").metadata,
        ];
        for m in metas {
            let name = m.name.clone().unwrap();
            let o = &m.owner_references.as_ref().unwrap()[0];
            assert_eq!(o.uid, "0000-1111", "{name}");
            assert_eq!(o.controller, Some(true), "{name}");
            assert_eq!(o.block_owner_deletion, Some(true), "{name}");
            assert_eq!(m.namespace.as_deref(), Some("shop-dev"), "{name}");
            let l = m.labels.as_ref().unwrap();
            assert_eq!(l[LABEL_MANAGED_BY], "slipway", "{name}");
            assert_eq!(l[LABEL_RELEASE], "shop", "{name}");
            assert_eq!(l[LABEL_INSTANCE], "shop", "{name}");
            assert_eq!(l[LABEL_NAME], "shop", "{name}");
            assert!(is_label_value(&l[LABEL_VERSION]), "{name}");
        }
    }

    #[test]
    fn selector_excludes_version_and_revision() {
        let d = deployment(
            &plan(),
            &web(ReplicaPolicy::Fixed { count: 1 }),
            &target(),
            600,
        );
        let spec = d.spec.unwrap();
        let sel = spec.selector.match_labels.unwrap();
        let keys: Vec<&str> = sel.keys().map(String::as_str).collect();
        assert_eq!(keys, [LABEL_COMPONENT, LABEL_INSTANCE, LABEL_RELEASE]);
        assert_eq!(sel[LABEL_COMPONENT], "web");
        let pod = spec.template.metadata.unwrap().labels.unwrap();
        for (k, v) in &sel {
            assert_eq!(&pod[k], v, "the template must match the selector");
        }
        assert_eq!(pod[LABEL_REVISION], "4");
        assert!(pod.contains_key(LABEL_VERSION));
        assert!(!d.metadata.labels.unwrap().contains_key(LABEL_REVISION));
    }

    #[test]
    fn selector_is_the_same_across_versions_and_revisions() {
        let svc = web(ReplicaPolicy::Fixed { count: 1 });
        let mut next = plan();
        next.version = "2.0.0".into();
        next.revision = 9;
        let a = deployment(&plan(), &svc, &target(), 600)
            .spec
            .unwrap()
            .selector;
        let b = deployment(&next, &svc, &target(), 600)
            .spec
            .unwrap()
            .selector;
        assert_eq!(a, b);
    }

    #[test]
    fn env_values_and_secret_refs() {
        let d = deployment(
            &plan(),
            &web(ReplicaPolicy::Fixed { count: 1 }),
            &target(),
            600,
        );
        let env = container_of(&d).env.clone().unwrap();
        let names: Vec<&str> = env.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["MODE", "DB_PASSWORD"], "azureKeyVault is skipped");
        assert_eq!(env[0].value.as_deref(), Some("dev"));
        assert!(env[0].value_from.is_none());
        assert_eq!(env[1].value, None);
        let sel = env[1]
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!((sel.name.as_str(), sel.key.as_str()), ("db", "password"));
    }

    #[test]
    fn probes_come_from_health() {
        let d = deployment(
            &plan(),
            &web(ReplicaPolicy::Fixed { count: 1 }),
            &target(),
            600,
        );
        let c = container_of(&d);
        let cases = [
            ("readiness", c.readiness_probe.as_ref().unwrap(), None),
            (
                "liveness",
                c.liveness_probe.as_ref().unwrap(),
                Some(LIVENESS_INITIAL_DELAY_SECONDS),
            ),
        ];
        for (case, p, delay) in cases {
            let get = p.http_get.as_ref().unwrap();
            assert_eq!(get.path.as_deref(), Some("/healthz"), "{case}");
            assert_eq!(get.port, IntOrString::Int(8080), "{case}");
            assert_eq!(p.period_seconds, Some(7), "{case}");
            assert_eq!(p.failure_threshold, Some(4), "{case}");
            assert_eq!(p.initial_delay_seconds, delay, "{case}");
        }
        let w = deployment(&plan(), &worker(), &target(), 600);
        let c = container_of(&w);
        assert!(c.readiness_probe.is_none() && c.liveness_probe.is_none());
        assert!(c.ports.is_none() && c.resources.is_none() && c.env.is_none());
        assert_eq!(c.command, Some(vec!["worker".to_string()]));
    }

    #[test]
    fn service_only_with_ports() {
        let p = plan();
        assert!(service(&p, &worker(), &target()).is_none());
        let s = service(&p, &web(ReplicaPolicy::Fixed { count: 1 }), &target()).unwrap();
        assert_eq!(s.metadata.name.as_deref(), Some("shop-web"));
        let spec = s.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(spec.selector.unwrap(), selector_labels(&p, "web"));
        let ports: Vec<_> = spec
            .ports
            .unwrap()
            .into_iter()
            .map(|p| (p.name.unwrap(), p.port, p.target_port.unwrap()))
            .collect();
        assert_eq!(
            ports,
            [
                ("http".to_string(), 8080, IntOrString::Int(8080)),
                ("metrics".to_string(), 9090, IntOrString::Int(9090)),
            ]
        );
    }

    #[test]
    fn ingress_backend_and_external_annotation() {
        let p = plan();
        assert!(ingress(&p, &worker(), &target()).is_none());
        for external in [true, false] {
            let mut svc = web(ReplicaPolicy::Fixed { count: 1 });
            svc.ingress.as_mut().unwrap().external = external;
            let i = ingress(&p, &svc, &target()).unwrap();
            assert_eq!(
                i.metadata.annotations.as_ref().unwrap()[EXTERNAL_ANNOTATION],
                external.to_string()
            );
            let rule = &i.spec.unwrap().rules.unwrap()[0];
            assert_eq!(rule.host.as_deref(), Some("shop.example"));
            let path = &rule.http.as_ref().unwrap().paths[0];
            assert_eq!(path.path.as_deref(), Some("/"));
            assert_eq!(path.path_type, "Prefix");
            let backend = path.backend.service.as_ref().unwrap();
            assert_eq!(backend.name, "shop-web");
            assert_eq!(backend.port.as_ref().unwrap().number, Some(8080));
        }
    }

    #[test]
    fn hpa_only_when_autoscaled() {
        let cases = [
            ("fixed", ReplicaPolicy::Fixed { count: 2 }, None),
            ("external", ReplicaPolicy::External, None),
            (
                "autoscaled",
                ReplicaPolicy::Autoscaled { min: 2, max: 6 },
                Some((2, 6)),
            ),
        ];
        for (case, policy, want) in cases {
            let h = hpa(&plan(), &web(policy), &target());
            assert_eq!(h.is_some(), want.is_some(), "{case}");
            let (Some(h), Some((min, max))) = (h, want) else {
                continue;
            };
            let spec = h.spec.unwrap();
            assert_eq!(spec.min_replicas, Some(min));
            assert_eq!(spec.max_replicas, max);
            assert_eq!(spec.scale_target_ref.kind, "Deployment");
            assert_eq!(spec.scale_target_ref.name, "shop-web");
            let m = &spec.metrics.unwrap()[0];
            let r = m.resource.as_ref().unwrap();
            assert_eq!((m.type_.as_str(), r.name.as_str()), ("Resource", "cpu"));
            assert_eq!(r.target.type_, "Utilization");
            assert_eq!(r.target.average_utilization, Some(70));
        }
    }

    #[test]
    fn cron_job_settings() {
        let c = cron_job(&plan(), &nightly(), &target());
        assert_eq!(c.metadata.name.as_deref(), Some("shop-nightly"));
        assert_eq!(
            c.metadata.labels.as_ref().unwrap()[LABEL_COMPONENT],
            "nightly"
        );
        let spec = c.spec.unwrap();
        assert_eq!(spec.schedule, "0 2 * * *");
        assert_eq!(spec.time_zone.as_deref(), Some("Europe/London"));
        assert_eq!(spec.concurrency_policy.as_deref(), Some("Forbid"));
        assert_eq!(spec.successful_jobs_history_limit, Some(3));
        assert_eq!(spec.failed_jobs_history_limit, Some(3));
        let job = spec.job_template.spec.unwrap();
        assert_eq!(job.backoff_limit, Some(2));
        assert_eq!(job.active_deadline_seconds, Some(600));
        let pod = job.template.spec.unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod.automount_service_account_token, Some(false));
        let r = pod.containers[0].resources.as_ref().unwrap();
        assert_eq!(r.limits.as_ref().unwrap().len(), 1, "only memory is set");
    }

    #[test]
    fn migration_job_settings() {
        let j = migration_job(&plan(), &migration(), &target(), "attempt-1");
        assert_eq!(
            j.metadata.name,
            Some(migration_job_name("shop", 4, "attempt-1"))
        );
        let ann = j.metadata.annotations.as_ref().unwrap();
        assert_eq!(ann[LABEL_REVISION], "4");
        assert!(!ann.contains_key(PLAN_HASH_ANNOTATION));
        let l = j.metadata.labels.as_ref().unwrap();
        assert_eq!(l[LABEL_COMPONENT], MIGRATION_COMPONENT);
        assert_eq!(l[LABEL_REVISION], "4");
        let spec = j.spec.unwrap();
        assert_eq!(spec.backoff_limit, Some(1));
        assert_eq!(spec.active_deadline_seconds, Some(300));
        assert_eq!(spec.ttl_seconds_after_finished, None);
        let tpl = spec.template;
        assert_eq!(tpl.metadata.unwrap().labels.unwrap()[LABEL_REVISION], "4");
        let pod = tpl.spec.unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod.containers[0].name, "migration");
    }

    #[test]
    fn migration_job_name_rules() {
        let long = "a".repeat(60);
        let dotted = "shop.eu-west.production-and-some-more-words-to-be-long";
        let base = migration_job_name("shop", 4, "k1");
        assert_eq!(base, migration_job_name("shop", 4, "k1"), "deterministic");
        assert!(base.starts_with("shop-migrate-4-"));
        assert_eq!(base.len(), "shop-migrate-4-".len() + 5);
        assert_ne!(base, migration_job_name("shop", 4, "k2"), "attempt key");
        assert_ne!(base, migration_job_name("shop", 5, "k1"), "revision");
        assert_ne!(base, migration_job_name("shop2", 4, "k1"), "release");
        let cases: [(&str, &str, i64, &str); 5] = [
            ("short", "shop", 4, "k1"),
            ("60 chars", &long, 4, "k1"),
            ("60 chars, huge revision", &long, i64::MAX, "k1"),
            ("dotted", dotted, 12, "k1"),
            (
                "trailing dash after cut",
                "ab-cdefghijklmnopqrstuvwxyz-abcdefghijklmnopqrstuv-wxyz",
                1,
                "x",
            ),
        ];
        for (case, release, rev, key) in cases {
            let n = migration_job_name(release, rev, key);
            assert!(n.len() <= 63, "{case}: {n} is {} chars", n.len());
            assert!(dns_label(&n), "{case}: {n} is not a DNS-1123 label");
            assert!(n.contains(&format!("-migrate-{rev}-")), "{case}: {n}");
        }
        assert_ne!(
            migration_job_name(&long, 4, "k1"),
            migration_job_name(&long, 4, "k2")
        );
    }

    #[test]
    fn workload_and_cron_job_names_fit() {
        let long = "b".repeat(60);
        let cases = [
            ("short", "shop", "web", Some("shop-web")),
            ("long", long.as_str(), "web", None),
            ("dotted", "shop.v2", "web", None),
        ];
        for (case, release, svc, want) in cases {
            let w = workload_name(release, svc);
            let c = cron_job_name(release, svc);
            assert!(dns_label(&w) && w.len() <= MAX_NAME_LEN, "{case}: {w}");
            assert!(
                dns_label(&c) && c.len() <= MAX_CRON_JOB_NAME_LEN,
                "{case}: {c}"
            );
            assert!(w.ends_with(&format!("-{svc}")), "{case}: {w}");
            if let Some(want) = want {
                assert_eq!(w, want, "{case}");
                assert_eq!(c, want, "{case}");
            }
        }
        // Releases differing only beyond the cut, or by `.` vs `-`, stay distinct.
        assert_ne!(
            workload_name(&format!("{long}x"), "web"),
            workload_name(&format!("{long}y"), "web")
        );
        assert_ne!(
            workload_name("shop.v2", "web"),
            workload_name("shop-v2", "web")
        );
    }

    #[test]
    fn label_values_are_sanitised() {
        let long = "v".repeat(80);
        let cases = [
            ("plain", "1.2.3", Some("1.2.3")),
            ("build metadata", "1.2.3+build.7", None),
            ("too long", long.as_str(), None),
            ("bad edges", "-x-", None),
            ("all invalid", "+++", None),
        ];
        for (case, input, want) in cases {
            let v = label_value(input);
            assert!(is_label_value(&v) && !v.is_empty(), "{case}: {v}");
            if let Some(want) = want {
                assert_eq!(v, want, "{case}");
            }
        }
        assert!(label_value("1.2.3+build.7").starts_with("1.2.3-build.7-"));
        assert_ne!(label_value("1.2.3+a"), label_value("1.2.3-a"));
    }

    #[test]
    fn plan_hash_changes_with_the_image_only() {
        let t = target();
        let p = plan();
        let svc = web(ReplicaPolicy::Autoscaled { min: 1, max: 4 });
        let hash = |d: &Deployment| observed_plan_hash(&d.metadata).unwrap().to_string();
        let base = deployment(&p, &svc, &t, 600);
        assert_eq!(hash(&base).len(), 16);
        assert_eq!(
            hash(&base),
            plan_hash(&base),
            "annotation is the hash of the rest"
        );

        // Changes elsewhere in the plan leave this service's objects alone.
        let mut other = p.clone();
        other.services[1].image = "registry.example/shop/worker:9".into();
        other.jobs[0].image = "registry.example/shop/jobs:9".into();
        other.migration = None;
        let same = deployment(&other, &svc, &t, 600);
        assert_eq!(hash(&base), hash(&same), "unrelated changes");
        assert_eq!(base, same);

        let mut changed = svc.clone();
        changed.image = "registry.example/shop/web:1.2.4".into();
        let new = deployment(&p, &changed, &t, 600);
        assert_ne!(hash(&base), hash(&new), "image change");

        let cases: [(&str, Option<String>, Option<String>); 4] = [
            (
                "service",
                observed_plan_hash(&service(&p, &svc, &t).unwrap().metadata).map(String::from),
                observed_plan_hash(&service(&other, &svc, &t).unwrap().metadata).map(String::from),
            ),
            (
                "ingress",
                observed_plan_hash(&ingress(&p, &svc, &t).unwrap().metadata).map(String::from),
                observed_plan_hash(&ingress(&other, &svc, &t).unwrap().metadata).map(String::from),
            ),
            (
                "hpa",
                observed_plan_hash(&hpa(&p, &svc, &t).unwrap().metadata).map(String::from),
                observed_plan_hash(&hpa(&other, &svc, &t).unwrap().metadata).map(String::from),
            ),
            (
                "cron job",
                observed_plan_hash(&cron_job(&p, &nightly(), &t).metadata).map(String::from),
                observed_plan_hash(&cron_job(&p, &nightly(), &t).metadata).map(String::from),
            ),
        ];
        for (case, a, b) in cases {
            assert!(a.is_some(), "{case} carries a plan hash");
            assert_eq!(a, b, "{case}");
        }
        let mut job = nightly();
        job.image = "registry.example/shop/jobs:2".into();
        assert_ne!(
            observed_plan_hash(&cron_job(&p, &nightly(), &t).metadata),
            observed_plan_hash(&cron_job(&p, &job, &t).metadata),
            "cron job image change"
        );
    }

    #[test]
    fn to_apply_sets_api_version_and_kind() {
        let p = plan();
        let t = target();
        let svc = web(ReplicaPolicy::Autoscaled { min: 1, max: 2 });
        let cases = [
            (
                to_apply(&deployment(&p, &svc, &t, 600)),
                "apps/v1",
                "Deployment",
            ),
            (to_apply(&service(&p, &svc, &t).unwrap()), "v1", "Service"),
            (
                to_apply(&ingress(&p, &svc, &t).unwrap()),
                "networking.k8s.io/v1",
                "Ingress",
            ),
            (
                to_apply(&hpa(&p, &svc, &t).unwrap()),
                "autoscaling/v2",
                "HorizontalPodAutoscaler",
            ),
            (
                to_apply(&cron_job(&p, &nightly(), &t)),
                "batch/v1",
                "CronJob",
            ),
            (
                to_apply(&migration_job(&p, &migration(), &t, "a")),
                "batch/v1",
                "Job",
            ),
        ];
        for (v, api_version, kind) in cases {
            assert_eq!(v["apiVersion"], api_version, "{kind}");
            assert_eq!(v["kind"], kind, "{kind}");
            assert!(v["metadata"]["name"].is_string(), "{kind}");
            assert!(v.get("status").is_none(), "{kind}");
        }
    }
}
