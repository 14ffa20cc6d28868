//! The ScaledWorker controller: reads the triggers, decides, scales the target, writes status.
//!
//! Thin I/O around the pure [`crate::scaling::step::step`] (which calls
//! [`crate::scaling::decision::desired_replicas`]): per poll of one ScaledWorker it
//!
//! 1. resolves the target: `target.deployment` is that Deployment; `target.release` is the
//!    Deployment `{release}-{service}` in the namespace the Release's Environment deploys to
//!    (the Release leaves its replica count alone, see `ReplicaPolicy::External`), and reads
//!    its **scale subresource**;
//! 2. reads every trigger through the process-wide [`SourcePool`] (connections shared per
//!    source address), with credentials from the trigger's `auth.secretName` Secret (all keys,
//!    as strings);
//! 3. calls `step`, writes the replica count through the scale subresource when it changed,
//!    writes status when it changed, and records the Events;
//! 4. asks to be polled again after `pollingIntervalSeconds`: a per-object timer
//!    (`Action::requeue`), no global sweep.
//!
//! Reconciles that the watch triggers between two polls (the status write of the previous poll
//! comes back as a watch event) do no I/O: [`Scaling`] remembers when each object is due, so
//! each trigger is read once per polling interval. A spec change (new generation) polls at
//! once. The memory also keeps the consecutive failure counts, the last status written and the
//! last active time at full precision; after an operator restart they come from `status`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};

use super::status::write_status;
use super::{error_policy, Context, Error};
use crate::api::{Environment, Release, ScaledWorker, ScaledWorkerStatus};
use crate::metrics::Metrics;
use crate::scaling::sources::{read_trigger, SourceError, SourcePool};
use crate::scaling::step::{self, StepEvent, StepInput, TargetState};

/// The field manager of the replica counts written through the scale subresource. (The
/// Release's own applies never name `replicas` of a service a ScaledWorker scales.)
pub const SCALE_MANAGER: &str = "slipway-scaledworker";

/// Forget an object this long after it was due and not polled (it was deleted).
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// Process-wide state of the ScaledWorker controller: the shared source connections and what
/// each object's last poll left behind.
pub struct Scaling {
    /// Connections to the trigger sources, shared by every ScaledWorker.
    pub pool: SourcePool,
    polls: Mutex<HashMap<String, Remembered>>,
    /// Replica counts of the Deployments in the watched scope, from one watch (names and
    /// `spec.replicas` only), so a poll reads its target without a request. Set when the
    /// controller starts; a target the cache does not hold is read from the API.
    targets: std::sync::OnceLock<Store<Deployment>>,
}

impl std::fmt::Debug for Scaling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scaling")
            .field("pool", &self.pool)
            .field("objects", &self.lock().len())
            .finish()
    }
}

/// What the last poll of one object (by uid) left behind.
#[derive(Clone, Debug)]
struct Remembered {
    generation: Option<i64>,
    next_poll: Instant,
    status: ScaledWorkerStatus,
    last_active_time: Option<chrono::DateTime<chrono::Utc>>,
}

impl Scaling {
    /// A fresh state with a [`SourcePool`] of default options.
    pub fn new() -> Result<Scaling, SourceError> {
        Ok(Scaling::with_pool(SourcePool::new()?))
    }

    pub fn with_pool(pool: SourcePool) -> Scaling {
        Scaling {
            pool,
            polls: Mutex::new(HashMap::new()),
            targets: std::sync::OnceLock::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Remembered>> {
        self.polls.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long until the object is due, when it is not due yet and its spec did not change.
    fn not_due(&self, uid: &str, generation: Option<i64>, now: Instant) -> Option<Duration> {
        let polls = self.lock();
        let r = polls.get(uid)?;
        (r.generation == generation && now < r.next_poll).then(|| r.next_poll - now)
    }

    fn remembered(&self, uid: &str) -> Option<Remembered> {
        self.lock().get(uid).cloned()
    }

    fn remember(&self, uid: String, r: Remembered) {
        let mut polls = self.lock();
        let now = Instant::now();
        polls.retain(|_, old| now < old.next_poll + FORGET_AFTER);
        polls.insert(uid, r);
    }
}

/// Builds the ScaledWorker controller stream and its object cache.
/// `targets`: the cache of the shared Deployment watch (`super::watches`), for replica counts.
pub fn controller(
    ctx: Arc<Context>,
    targets: Store<Deployment>,
) -> (
    impl futures::Stream<
        Item = Result<
            (kube::runtime::reflector::ObjectRef<ScaledWorker>, Action),
            impl std::error::Error,
        >,
    >,
    Store<ScaledWorker>,
) {
    let api: Api<ScaledWorker> = ctx.watched();
    let controller = Controller::new(api, watcher::Config::default().any_semantic());
    // Target replica counts from a watch instead of one GET of the scale subresource per poll
    // (1000 ScaledWorkers at 5 s were 200 GET/s).
    let _ = ctx.scaling.targets.set(targets);
    let store = controller.store();
    let stream = controller
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx);
    (stream, store)
}

/// Reconciles one ScaledWorker: one poll when it is due, nothing otherwise.
pub async fn reconcile(obj: Arc<ScaledWorker>, ctx: Arc<Context>) -> Result<Action, Error> {
    let uid = obj.uid().unwrap_or_default();
    if let Some(wait) = ctx
        .scaling
        .not_due(&uid, obj.metadata.generation, Instant::now())
    {
        return Ok(Action::requeue(wait));
    }
    let labels = Metrics::kind("ScaledWorker");
    // An older copy than our last status write would count the same failed read twice or
    // restart a cooldown: wait for the watch to bring the newer one.
    if ctx.written.is_stale(obj.as_ref()) {
        ctx.metrics.stale_reads.get_or_create(&labels).inc();
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    let started = Instant::now();
    ctx.metrics.reconciliations.get_or_create(&labels).inc();
    let result = poll(&obj, uid, &ctx, started).await;
    ctx.metrics
        .duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    result
}

/// The target resolved to a Deployment, or why it cannot be.
enum Resolved {
    Deployment { name: String, namespace: String },
    State(TargetState),
}

async fn poll(
    sw: &ScaledWorker,
    uid: String,
    ctx: &Context,
    started: Instant,
) -> Result<Action, Error> {
    let ns = sw.namespace().ok_or_else(|| Error::MissingNamespace {
        kind: "ScaledWorker",
        name: sw.name_any(),
    })?;
    let (target, readings) =
        tokio::join!(observe_target(sw, &ns, ctx), read_triggers(sw, &ns, ctx));
    let (resolved, state) = target?;

    let remembered = ctx.scaling.remembered(&uid);
    let object_status = sw.status.clone().unwrap_or_default();
    let previous = remembered
        .as_ref()
        .map(|r| &r.status)
        .unwrap_or(&object_status);
    let out = step::step(&StepInput {
        spec: &sw.spec,
        generation: sw.metadata.generation,
        previous,
        remembered_last_active: remembered.as_ref().and_then(|r| r.last_active_time),
        readings,
        target_name: sw.spec.target.describe(),
        target: state,
        now: chrono::Utc::now(),
    });

    if let (Some(replicas), Resolved::Deployment { name, namespace }) = (out.scale_to, &resolved) {
        let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), namespace);
        api.patch_scale(
            name,
            &PatchParams {
                field_manager: Some(SCALE_MANAGER.into()),
                ..Default::default()
            },
            &Patch::Merge(serde_json::json!({ "spec": { "replicas": replicas } })),
        )
        .await?;
        tracing::info!(
            scaledworker = %sw.name_any(), namespace = %ns, deployment = %name, replicas,
            reason = out.decision.as_ref().map(|d| d.reason.as_str()).unwrap_or(""),
            "scaled"
        );
    }
    write_status(sw, &out.status, ctx).await?;
    for ev in &out.events {
        publish(ctx, sw, ev).await;
    }

    let next_poll = started + out.requeue;
    ctx.scaling.remember(
        uid,
        Remembered {
            generation: sw.metadata.generation,
            next_poll,
            status: out.status,
            last_active_time: out.last_active_time,
        },
    );
    Ok(Action::requeue(
        next_poll
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(50)),
    ))
}

/// Finds the target and reads its replica count through the scale subresource.
async fn observe_target(
    sw: &ScaledWorker,
    ns: &str,
    ctx: &Context,
) -> Result<(Resolved, TargetState), Error> {
    let resolved = resolve_target(sw, ns, ctx).await?;
    let state = match &resolved {
        Resolved::State(s) => s.clone(),
        Resolved::Deployment { name, namespace } => {
            let cached = ctx.scaling.targets.get().and_then(|c| {
                c.get(&kube::runtime::reflector::ObjectRef::new(name).within(namespace))
            });
            if let Some(d) = cached {
                // The API server defaults an omitted replica count to 1.
                let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                return Ok((resolved, TargetState::Found { replicas }));
            }
            match Api::<Deployment>::namespaced(ctx.client.clone(), namespace)
                .get_scale(name)
                .await
            {
                Ok(scale) => TargetState::Found {
                    // `replicas: 0` is omitted from a Scale's spec.
                    replicas: scale.spec.and_then(|s| s.replicas).unwrap_or(0),
                },
                Err(kube::Error::Api(e)) if e.code == 404 => TargetState::NotFound {
                    message: format!(
                        "{}: Deployment {name} not found in namespace {namespace}",
                        target_field(sw)
                    ),
                },
                Err(e) => return Err(e.into()),
            }
        }
    };
    Ok((resolved, state))
}

fn target_field(sw: &ScaledWorker) -> &'static str {
    if sw.spec.target.release.is_some() {
        "spec.target.release"
    } else {
        "spec.target.deployment"
    }
}

/// `target.deployment`: that Deployment. `target.release`: the Deployment of the Release
/// service, in the namespace its Environment deploys to.
async fn resolve_target(sw: &ScaledWorker, ns: &str, ctx: &Context) -> Result<Resolved, Error> {
    let t = &sw.spec.target;
    if let Some(d) = &t.deployment {
        return Ok(Resolved::Deployment {
            name: d.name.clone(),
            namespace: ns.to_string(),
        });
    }
    let Some(r) = &t.release else {
        return Ok(Resolved::State(TargetState::Unusable {
            reason: "InvalidSpec".into(),
            message: "spec.target: set exactly one of release or deployment".into(),
        }));
    };
    let not_found = |message: String| Ok(Resolved::State(TargetState::NotFound { message }));
    let releases: Api<Release> = Api::namespaced(ctx.client.clone(), ns);
    let Some(rel) = releases.get_opt(&r.name).await? else {
        return not_found(format!(
            "spec.target.release: Release {} not found in namespace {ns}",
            r.name
        ));
    };
    if !rel.spec.services.iter().any(|s| s.name == r.service) {
        return not_found(format!(
            "spec.target.release: Release {} has no service {}",
            r.name, r.service
        ));
    }
    let envs: Api<Environment> = Api::namespaced(ctx.client.clone(), ns);
    let Some(env) = envs.get_opt(&rel.spec.environment).await? else {
        return not_found(format!(
            "spec.target.release: Environment {} of Release {} not found in namespace {ns}",
            rel.spec.environment, r.name
        ));
    };
    if env.spec.platform.kubernetes.is_none() {
        return Ok(Resolved::State(TargetState::Unusable {
            reason: "PlatformNotSupported".into(),
            message: format!(
                "spec.target.release: Release {} runs on platform.{} of Environment {}; only \
                 platform.kubernetes can be scaled so far",
                r.name,
                env.spec.platform.kind_name(),
                env.name_any()
            ),
        }));
    }
    let target_ns = super::environment::target_namespace(&env);
    Ok(Resolved::Deployment {
        name: crate::platform::kubernetes::render::workload_name(&r.name, &r.service),
        namespace: target_ns,
    })
}

/// Reads every trigger (concurrently), each with its auth Secret; one result per trigger, in
/// spec order. Errors are messages without secrets.
async fn read_triggers(sw: &ScaledWorker, ns: &str, ctx: &Context) -> Vec<Result<i64, String>> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let mut names: Vec<&str> = sw
        .spec
        .triggers
        .iter()
        .filter_map(|t| t.auth.as_ref().map(|a| a.secret_name.as_str()))
        .collect();
    names.sort_unstable();
    names.dedup();
    let mut auth: HashMap<&str, Result<BTreeMap<String, String>, String>> = HashMap::new();
    for name in names {
        let data = match secrets.get_opt(name).await {
            Ok(Some(s)) => Ok(secret_strings(&s)),
            Ok(None) => Err(format!("auth Secret {name} not found in namespace {ns}")),
            Err(e) => Err(format!("reading auth Secret {name}: {e}")),
        };
        auth.insert(name, data);
    }
    let empty = Ok(BTreeMap::new());
    let reads = sw.spec.triggers.iter().map(|t| {
        let creds = match &t.auth {
            Some(a) => auth.get(a.secret_name.as_str()).unwrap_or(&empty),
            None => &empty,
        };
        async move {
            match creds {
                Ok(creds) => read_trigger(&ctx.scaling.pool, t, creds)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.clone()),
            }
        }
    });
    futures::future::join_all(reads).await
}

/// Every key of a Secret as a string (invalid UTF-8 replaced).
pub fn secret_strings(s: &Secret) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = s
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
        .collect();
    // stringData is write-only on a real API server; kept for objects built by hand.
    for (k, v) in s.string_data.iter().flatten() {
        out.entry(k.clone()).or_insert_with(|| v.clone());
    }
    out
}

async fn publish(ctx: &Context, sw: &ScaledWorker, ev: &StepEvent) {
    // A recorder per Event: kube's Recorder folds Events of the same reason into one series
    // and keeps the first note, which would hide the trigger and value of later scale changes.
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    let event = Event {
        type_: if ev.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: ev.reason.into(),
        note: Some(ev.message.chars().take(1000).collect()),
        action: "Scale".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &sw.object_ref(&())).await {
        tracing::debug!(error = %e, "could not record an Event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    #[test]
    fn secret_keys_become_strings() {
        let s = Secret {
            data: Some(BTreeMap::from([
                ("password".to_string(), ByteString(b"hunter2".to_vec())),
                ("bad".to_string(), ByteString(vec![0xff, b'a'])),
            ])),
            string_data: Some(BTreeMap::from([
                ("username".to_string(), "app".to_string()),
                ("password".to_string(), "ignored".to_string()),
            ])),
            ..Default::default()
        };
        let m = secret_strings(&s);
        assert_eq!(m["password"], "hunter2");
        assert_eq!(m["username"], "app");
        assert_eq!(m["bad"], "\u{fffd}a");
    }

    #[test]
    fn an_object_is_not_polled_again_before_it_is_due() {
        let scaling = Scaling::new().unwrap();
        let now = Instant::now();
        assert_eq!(
            scaling.not_due("u", Some(1), now),
            None,
            "never polled: due"
        );
        scaling.remember(
            "u".into(),
            Remembered {
                generation: Some(1),
                next_poll: now + Duration::from_secs(5),
                status: Default::default(),
                last_active_time: None,
            },
        );
        let wait = scaling.not_due("u", Some(1), now).unwrap();
        assert!(wait <= Duration::from_secs(5) && wait > Duration::from_secs(4));
        assert_eq!(
            scaling.not_due("u", Some(2), now),
            None,
            "a spec change polls at once"
        );
        assert_eq!(
            scaling.not_due("u", Some(1), now + Duration::from_secs(5)),
            None
        );
        assert_eq!(scaling.not_due("other", Some(1), now), None);
    }
}
