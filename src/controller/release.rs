//! The Release controller: loads the Release and its Environment, resolves the revision plan,
//! asks the pure state machine (`release::machine`) what to do, carries the actions out
//! through the platform, and writes status.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Resource, ResourceExt};

use super::slots::{Slot, Slots};
use super::status::write_status;
use super::watches::Listener;
use super::{error_policy, Context, Error};
use crate::api::{
    Environment, Phase, Release, ReleaseStatus, ScaledWorker, APPROVED_VERSION_ANNOTATION,
    RETRY_ANNOTATION,
};
use crate::metrics::Metrics;
use crate::platform::kubernetes::ops::KubernetesPlatform;
use crate::platform::kubernetes::render::{self, Target};
use crate::release::machine::{self, Gate, Gates, MigrationObserved, RolloutObserved};
use crate::release::plan::{self, RevisionPlan};

/// Finalizer that removes what a Release created (also outside its own namespace).
pub const FINALIZER: &str = "slipway.dev/cleanup";

/// Builds the Release controller stream and its object cache. It also wakes on changes of the
/// Jobs and Deployments it owns and of the Environments Releases point at.
/// What the Release reconcile gets: the shared context plus the watch cache of the
/// Deployments it manages (fed by the same watch that wakes it).
pub struct ReleaseContext {
    pub base: Arc<Context>,
    pub deployments: Store<Deployment>,
    /// Watch cache of ScaledWorkers: which Release services they scale.
    pub scaled_workers: Store<ScaledWorker>,
    /// Watch cache of migration Jobs.
    pub jobs: Store<Job>,
    /// Watch cache of Environments.
    pub environments: Store<Environment>,
    /// When this process last wrote each Release's status (by uid), to space out writes that
    /// only report rollout progress.
    pub progress: ProgressWrites,
    /// Watch cache of Releases (the controller's own).
    pub releases: Store<Release>,
    /// Which Releases run a migration, and which wait for a slot to start one.
    pub migration_slots: Slots<ObjectRef<Release>>,
}

/// The least time between two status writes of one Release that differ only in
/// `status.services` (replica counts while a rollout progresses). Phase, condition and
/// migration changes are written at once; progress in between waits, so a rollout whose pods
/// become ready one by one costs a few writes instead of one per Deployment status change.
pub const PROGRESS_WRITE_INTERVAL: Duration = Duration::from_secs(10);

/// When this process last wrote each Release's status, by uid.
#[derive(Default, Debug)]
pub struct ProgressWrites(std::sync::Mutex<std::collections::HashMap<String, Instant>>);

impl ProgressWrites {
    /// Records a status write of the object with this uid at `at`. Entries older than the
    /// interval no longer hold anything back and are dropped, so the map holds only the
    /// Releases written in the last interval (deleted ones included, briefly).
    pub fn wrote(&self, uid: &str, at: Instant) {
        let mut map = self.lock();
        map.retain(|_, t| at.saturating_duration_since(*t) < PROGRESS_WRITE_INTERVAL);
        map.insert(uid.to_string(), at);
    }

    /// Objects written within the interval.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets an object (it is gone).
    pub fn forget(&self, uid: &str) {
        self.lock().remove(uid);
    }

    /// How long a progress-only write of this object has to wait, if at all.
    pub fn wait(&self, uid: &str, now: Instant) -> Option<Duration> {
        let last = *self.lock().get(uid)?;
        PROGRESS_WRITE_INTERVAL
            .checked_sub(now.saturating_duration_since(last))
            .filter(|d| !d.is_zero())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Instant>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether `new` differs from `old` only in `services` (rollout progress). Pure.
pub fn only_progress_differs(old: &ReleaseStatus, new: &ReleaseStatus) -> bool {
    if old == new || old.services == new.services {
        return false;
    }
    let (mut a, mut b) = (old.clone(), new.clone());
    a.services.clear();
    b.services.clear();
    a == b
}

fn release_error_policy(rel: Arc<Release>, err: &Error, ctx: Arc<ReleaseContext>) -> Requeue {
    error_policy(rel, err, ctx.base.clone())
}

/// `releases` and `deployments`: the shared watches of Releases and Deployments
/// (`super::watches`), each a cache and this controller's stream of changes.
/// `max_concurrent_migrations`: how many migration Jobs may run at once (0: no limit).
pub fn controller(
    ctx: Arc<Context>,
    releases: (Store<Release>, Listener<Release>),
    deployments: (Store<Deployment>, Listener<Deployment>),
    max_concurrent_migrations: usize,
) -> impl futures::Stream<Item = Result<(ObjectRef<Release>, Requeue), impl std::error::Error>> {
    // A burst of watch events (a Deployment's status changes as its pods start) becomes one
    // reconcile. Kept short: every step of a rollout (Release created, migration done,
    // services available) waits for it, and writes are already spaced by the progress limit.
    let (store, release_events) = releases;
    let controller = Controller::for_stream(release_events, store.clone()).with_config(
        kube::runtime::controller::Config::default().debounce(Duration::from_millis(100)),
    );
    let (deployments, deployment_events) = deployments;
    let (scaled_workers, sw_writer) = kube::runtime::reflector::store::<ScaledWorker>();
    // A ScaledWorker that starts or stops targeting a Release service changes who owns that
    // service's replica count: wake the Release.
    let sw_events =
        kube::runtime::watcher(ctx.watched::<ScaledWorker>(), watcher::Config::default())
            .default_backoff()
            .reflect(sw_writer)
            .touched_objects();
    let (jobs, job_writer) = kube::runtime::reflector::store::<Job>();
    let job_events = kube::runtime::watcher(
        ctx.watched::<Job>(),
        watcher::Config::default().labels("app.kubernetes.io/managed-by=slipway"),
    )
    .default_backoff()
    .reflect(job_writer)
    .touched_objects();
    let (environments, env_writer) = kube::runtime::reflector::store::<Environment>();
    let env_events =
        kube::runtime::watcher(ctx.watched::<Environment>(), watcher::Config::default())
            .default_backoff()
            .reflect(env_writer)
            .touched_objects();
    let (migration_slots, slot_freed) = Slots::new(max_concurrent_migrations);
    let rctx = Arc::new(ReleaseContext {
        base: ctx.clone(),
        deployments,
        scaled_workers,
        jobs,
        environments,
        progress: ProgressWrites::default(),
        releases: store.clone(),
        migration_slots,
    });
    let releases = store;
    controller
        // A Release queued for a migration slot is woken when the slot is its.
        .reconcile_on(slot_freed)
        .owns_stream(job_events)
        .owns_stream(deployment_events)
        .watches_stream(sw_events, |sw: ScaledWorker| {
            let ns = sw.namespace();
            sw.spec.target.release.map(|t| {
                let r = ObjectRef::new(&t.name);
                match ns {
                    Some(ns) => r.within(&ns),
                    None => r,
                }
            })
        })
        .watches_stream(env_events, move |env: Environment| {
            let ns = env.namespace();
            let name = env.name_any();
            releases
                .state()
                .into_iter()
                .filter(|r| r.namespace() == ns && r.spec.environment == name)
                .map(|r| ObjectRef::from_obj(r.as_ref()))
                .collect::<Vec<_>>()
        })
        .shutdown_on_signal()
        .run(reconcile, release_error_policy, rctx)
}

/// Reconciles one Release.
pub async fn reconcile(rel: Arc<Release>, rctx: Arc<ReleaseContext>) -> Result<Requeue, Error> {
    let ctx = &rctx.base;
    let started = Instant::now();
    let labels = Metrics::kind("Release");
    ctx.metrics.reconciliations.get_or_create(&labels).inc();
    let ns = rel.namespace().ok_or_else(|| Error::MissingNamespace {
        kind: "Release",
        name: rel.name_any(),
    })?;
    // A copy older than our own last write would repeat what that write recorded; the watch
    // brings the newer one in a moment and wakes this Release again.
    if ctx.written.is_stale(rel.as_ref()) {
        ctx.metrics.stale_reads.get_or_create(&labels).inc();
        return Ok(Requeue::requeue(Duration::from_secs(1)));
    }
    let result = with_finalizer(rel, &ns, ctx, &rctx).await;
    ctx.metrics
        .duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    result
}

/// Adds our finalizer before anything is created where owner references cannot reach, and on
/// deletion cleans up, then removes it.
/// Merge patches carry the resourceVersion, so a concurrent change makes them fail (409) and
/// the reconcile retries with fresh data instead of overwriting someone else's finalizers.
async fn with_finalizer(
    rel: Arc<Release>,
    ns: &str,
    ctx: &Context,
    caches: &ReleaseContext,
) -> Result<Requeue, Error> {
    let api: Api<Release> = Api::namespaced(ctx.client.clone(), ns);
    let has = rel.finalizers().iter().any(|f| f == FINALIZER);
    let patch_finalizers = |list: Vec<String>| serde_json::json!({ "metadata": { "finalizers": list, "resourceVersion": rel.resource_version() } });
    if rel.metadata.deletion_timestamp.is_some() {
        if has {
            cleanup(rel.clone(), ctx).await?;
            let rest: Vec<String> = rel
                .finalizers()
                .iter()
                .filter(|f| *f != FINALIZER)
                .cloned()
                .collect();
            api.patch(
                &rel.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch_finalizers(rest)),
            )
            .await?;
        }
        ctx.written.forget(rel.as_ref());
        caches
            .progress
            .forget(rel.uid().as_deref().unwrap_or_default());
        caches.migration_slots.release(&slot_key(&rel));
        return Ok(Requeue::await_change());
    }
    // Owner references let the garbage collector remove what a Release created in its own
    // namespace; only workloads elsewhere (another namespace, later a cloud platform) need a
    // finalizer, so most Releases never hold up their own or their namespace's deletion.
    let env = caches
        .environments
        .get(&ObjectRef::new(&rel.spec.environment).within(ns));
    let needs = env.as_deref().is_some_and(|env| needs_finalizer(env, ns));
    if !has && needs {
        let mut list = rel.finalizers().to_vec();
        list.push(FINALIZER.to_string());
        let written = api
            .patch(
                &rel.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch_finalizers(list)),
            )
            .await?;
        ctx.written.record(&written);
    }
    apply(rel, env, ctx, caches).await
}

/// Whether a Release in `ns` targeting `env` creates anything that owner references cannot
/// clean up: workloads outside its namespace or off the cluster.
fn needs_finalizer(env: &Environment, ns: &str) -> bool {
    env.spec.platform.kubernetes.is_none() || super::environment::target_namespace(env) != ns
}

/// Where the Release's workloads go, and whether that is outside the Release's namespace.
fn target(rel: &Release, env: &Environment) -> Target {
    let ns = super::environment::target_namespace(env);
    Target {
        namespace: ns,
        owner: rel
            .controller_owner_ref(&())
            .expect("a Release from the API has a uid"),
    }
}

async fn cleanup(rel: Arc<Release>, ctx: &Context) -> Result<Requeue, Error> {
    let ns = rel.namespace().unwrap_or_default();
    let envs: Api<Environment> = Api::namespaced(ctx.client.clone(), &ns);
    let target_ns = match envs.get_opt(&rel.spec.environment).await? {
        Some(env) => target(&rel, &env).namespace,
        None => ns.clone(),
    };
    let owner = rel
        .controller_owner_ref(&())
        .expect("a Release from the API has a uid");
    let platform = KubernetesPlatform::new(
        ctx.client.clone(),
        Target {
            namespace: target_ns,
            owner,
        },
    );
    platform.delete_all(&rel.name_any()).await?;
    tracing::info!(release = %rel.name_any(), namespace = %ns, "deleted everything the Release created");
    Ok(Requeue::await_change())
}

/// Writes a status that says the Release cannot proceed and why, naming the field.
async fn blocked(
    rel: &Release,
    ctx: &Context,
    reason: &str,
    message: String,
    stalled: bool,
) -> Result<Requeue, Error> {
    use crate::api::{set_kstatus_conditions, Convergence};
    let g = rel.metadata.generation;
    let mut st = rel.status.clone().unwrap_or_default();
    st.observed_generation = g;
    if st.phase.is_none() {
        st.phase = Some(Phase::Pending);
    }
    // Waiting on something that may resolve itself (Reconciling) or on a spec change
    // (Stalled).
    let state = if stalled {
        Convergence::Stalled
    } else {
        Convergence::Reconciling
    };
    set_kstatus_conditions(&mut st.conditions, state, |t, s| {
        super::status::condition(t, s, reason, message.clone(), g)
    });
    if write_status(rel, &st, ctx).await? {
        publish(ctx, rel, true, reason, &message).await;
    }
    Ok(Requeue::requeue(Duration::from_secs(30)))
}

async fn publish(ctx: &Context, rel: &Release, warning: bool, reason: &str, message: &str) {
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    let ev = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.into(),
        note: Some(message.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, &rel.object_ref(&())).await {
        tracing::debug!(error = %e, "could not record an Event");
    }
}

/// The promotion gate: the same app must have Succeeded with this version in `from`.
async fn promotion_gate(rel: &Release, env: &Environment, ctx: &Context) -> Result<Gate, Error> {
    let Some(from) = env.spec.promotion.as_ref().and_then(|p| p.from.clone()) else {
        return Ok(Gate::Open);
    };
    let ns = rel.namespace().unwrap_or_default();
    let app = rel.spec.app.clone().unwrap_or_else(|| rel.name_any());
    let all: Api<Release> = Api::namespaced(ctx.client.clone(), &ns);
    let succeeded = all
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .any(|r| {
            let r_app = r.spec.app.clone().unwrap_or_else(|| r.name_any());
            let Some(st) = r.status.as_ref() else {
                return false;
            };
            r_app == app
                && r.spec.environment == from
                && ((st.phase == Some(Phase::Succeeded)
                    && st.version.as_deref() == Some(rel.spec.version.as_str()))
                    || st
                        .history
                        .iter()
                        .any(|h| h.phase == Phase::Succeeded && h.version == rel.spec.version))
        });
    Ok(if succeeded {
        Gate::Open
    } else {
        Gate::Waiting(format!(
            "{app} {} has not Succeeded in Environment {from} yet (promotion.from of Environment {})",
            rel.spec.version,
            env.name_any()
        ))
    })
}

fn approval_gate(rel: &Release, env: &Environment) -> Gate {
    let required = env
        .spec
        .promotion
        .as_ref()
        .is_some_and(|p| p.require_approval);
    let approved = rel
        .annotations()
        .get(APPROVED_VERSION_ANNOTATION)
        .map(String::as_str);
    if !required || approved == Some(rel.spec.version.as_str()) {
        Gate::Open
    } else {
        Gate::Waiting(format!(
            "Environment {} requires approval: set annotation {APPROVED_VERSION_ANNOTATION}={} on Release {}",
            env.name_any(),
            rel.spec.version,
            rel.name_any()
        ))
    }
}

/// Services of this Release that a ScaledWorker scales.
fn scaled_services(rel: &Release, scaled_workers: &Store<ScaledWorker>) -> Vec<String> {
    let ns = rel.namespace();
    let mut services: Vec<String> = scaled_workers
        .state()
        .iter()
        .filter(|s| s.namespace() == ns)
        .filter_map(|s| {
            s.spec
                .target
                .release
                .clone()
                .filter(|t| t.name == rel.name_any())
                .map(|t| t.service)
        })
        .collect();
    services.sort();
    services
}

/// One HTTP GET attempt; 2xx passes. Plain HTTP only: HTTPS verification is not built yet.
async fn verify_once(url: &str) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// verification URLs are supported so far"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(&addr)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        s.write_all(
            format!("GET {path} HTTP/1.0\r\nHost: {hostport}\r\nUser-Agent: slipway\r\n\r\n")
                .as_bytes(),
        )
        .await
        .map_err(|e| format!("{url}: {e}"))?;
        let mut buf = vec![0u8; 64];
        let n = s.read(&mut buf).await.map_err(|e| format!("{url}: {e}"))?;
        let head = String::from_utf8_lossy(&buf[..n]).to_string();
        let code: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        if (200..300).contains(&code) {
            Ok(())
        } else {
            Err(format!("{url} answered HTTP {code}"))
        }
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .unwrap_or_else(|_| Err(format!("{url}: timed out")))
}

fn verify_url(rel: &Release, plan: &RevisionPlan, target_ns: &str) -> Option<String> {
    let v = rel.spec.rollout.as_ref()?.verify.as_ref()?;
    if let Some(url) = &v.url {
        return Some(url.clone());
    }
    let svc = v.service.as_ref()?;
    let port = plan
        .services
        .iter()
        .find(|s| &s.name == svc)?
        .ports
        .first()?
        .port;
    Some(format!(
        "http://{}.{target_ns}.svc:{port}{}",
        render::workload_name(&rel.name_any(), svc),
        v.path.clone().unwrap_or_else(|| "/".into())
    ))
}

fn slot_key(rel: &Release) -> ObjectRef<Release> {
    ObjectRef::new(&rel.name_any()).within(&rel.namespace().unwrap_or_default())
}

/// Asks for a migration slot for `me`. The first ask after a start counts the migrations the
/// cache shows running (started before a restart, or by another replica before a failover).
async fn take_slot(caches: &ReleaseContext, me: &ObjectRef<Release>) -> Slot {
    let slots = &caches.migration_slots;
    if !slots.is_seeded() {
        if super::synced(&caches.releases).await.is_err() {
            // The cache's writer is gone (shutting down): never block on it.
            return Slot::Granted;
        }
        slots.seed(
            caches
                .releases
                .state()
                .iter()
                .filter(|r| {
                    r.status
                        .as_ref()
                        .and_then(|s| s.migration.as_ref())
                        .is_some_and(|m| m.state == "Running")
                })
                .map(|r| slot_key(r)),
        );
    }
    slots.try_acquire(me, |k| caches.releases.get(k).is_some())
}

/// `env`: the Release's Environment from the watch cache, if there.
async fn apply(
    rel: Arc<Release>,
    env: Option<Arc<Environment>>,
    ctx: &Context,
    caches: &ReleaseContext,
) -> Result<Requeue, Error> {
    let deployments = &caches.deployments;
    let ns = rel.namespace().unwrap_or_default();
    let name = rel.name_any();
    let Some(env) = env.map(|e| e.as_ref().clone()) else {
        return blocked(
            &rel,
            ctx,
            "EnvironmentNotFound",
            format!(
                "spec.environment: Environment {} not found in namespace {ns}",
                rel.spec.environment
            ),
            false,
        )
        .await;
    };
    if let Some(problem) = super::environment::validate(&env.name_any(), &env.spec) {
        return blocked(
            &rel,
            ctx,
            problem.reason,
            format!("spec.environment: {}", problem.message),
            true,
        )
        .await;
    }
    let scaled = scaled_services(&rel, &caches.scaled_workers);
    let plan = match plan::resolve(&rel, &env, &scaled) {
        Ok(p) => p,
        Err(e) => {
            return blocked(
                &rel,
                ctx,
                "InvalidSpec",
                format!("Release {name}: {e}"),
                true,
            )
            .await
        }
    };
    let tgt = target(&rel, &env);
    let target_ns = tgt.namespace.clone();
    let platform =
        KubernetesPlatform::new(ctx.client.clone(), tgt).cross_namespace(target_ns != ns);
    // The cache holds what the operator watches; a target in another namespace may be outside
    // it (with --namespace), so read that one from the API.
    let platform = if target_ns == ns {
        platform.with_deployment_cache(deployments.clone())
    } else {
        platform
    };

    let status = rel.status.clone().unwrap_or_default();
    let had_earlier_revisions = !status.history.is_empty()
        || status
            .revision
            .is_some_and(|r| r != rel.metadata.generation.unwrap_or(1));
    let platform = platform.with_pruning(had_earlier_revisions);
    let retry = rel.annotations().get(RETRY_ANNOTATION).cloned();
    let attempt_key = retry.clone().unwrap_or_default();
    let generation = rel.metadata.generation.unwrap_or(1);
    let rollout = rel.spec.rollout.clone().unwrap_or_default();
    let gates = Gates {
        frozen: env.spec.freeze,
        promotion: promotion_gate(&rel, &env, ctx).await?,
        approval: approval_gate(&rel, &env),
        migration_slot: Gate::Open,
    };
    let migration = match &status.migration {
        Some(m) if m.state == "Running" => platform.migration(&m.job, Some(&caches.jobs)).await?,
        Some(m) if m.state == "Succeeded" => MigrationObserved::Succeeded,
        _ => MigrationObserved::Absent,
    };
    let observe = matches!(
        status.phase,
        Some(Phase::RollingOut) | Some(Phase::Verifying) | Some(Phase::Succeeded)
    ) && status.revision == Some(generation);
    let (rollout_observed, services) = if observe {
        let (o, s) = platform
            .observe(&plan, rollout.progress_deadline_seconds)
            .await?;
        (o, Some(s))
    } else {
        (RolloutObserved::default(), None)
    };
    let verify = if status.phase == Some(Phase::Verifying) && status.revision == Some(generation) {
        match verify_url(&rel, &plan, &target_ns) {
            Some(url) => Some(verify_once(&url).await),
            None => Some(Err("rollout.verify has no usable URL".into())),
        }
    } else {
        None
    };
    let rollback_target = status
        .last_succeeded_revision
        .filter(|r| *r != generation)
        .map(|r| {
            let version = status
                .history
                .iter()
                .find(|h| h.revision == r)
                .map(|h| h.version.clone())
                .or_else(|| status.version.clone())
                .unwrap_or_default();
            (r, version)
        });
    let mut input = machine::Input {
        generation,
        version: rel.spec.version.clone(),
        retry,
        status: status.clone(),
        gates,
        has_migration: plan.migration.is_some(),
        migration_job_name: render::migration_job_name(&name, generation, &attempt_key),
        migration,
        rollout: rollout_observed,
        verify_attempts_allowed: rollout.verify.as_ref().map(|v| v.attempts),
        verify_interval: Duration::from_secs(
            rollout
                .verify
                .as_ref()
                .map(|v| v.interval_seconds)
                .unwrap_or(6) as u64,
        ),
        verify,
        auto_rollback: rollout.auto_rollback,
        rollback_target,
        progress_deadline: Duration::from_secs(rollout.progress_deadline_seconds as u64),
        history_limit: rel.spec.revision_history_limit.max(1) as usize,
        now: chrono::Utc::now(),
    };
    let mut decision = machine::decide(&input);
    // Starting a migration takes a slot; without one the Release waits in Pending, queued.
    let me = slot_key(&rel);
    let starts = decision.actions.contains(&machine::Action::StartMigration)
        && status
            .migration
            .as_ref()
            .is_none_or(|m| m.state != "Running");
    let mut queued = false;
    if starts {
        if let Slot::Queued { .. } = take_slot(caches, &me).await {
            queued = true;
            input.gates.migration_slot = Gate::Waiting(format!(
                "waiting for a migration slot: at most {} migrations run at once (--max-concurrent-migrations); \
                 queued Releases start in the order they asked",
                caches.migration_slots.limit()
            ));
            decision = machine::decide(&input);
        }
    }
    if decision
        .status
        .migration
        .as_ref()
        .is_some_and(|m| m.state == "Running")
    {
        caches.migration_slots.hold(&me);
    } else if !queued {
        caches.migration_slots.release(&me);
    }
    let (running, waiting) = caches.migration_slots.counts();
    ctx.metrics.migrations_running.set(running as i64);
    ctx.metrics.migrations_queued.set(waiting as i64);

    for action in &decision.actions {
        match action {
            machine::Action::StartMigration => {
                platform.prepare().await?;
                platform
                    .start_migration(&plan, &attempt_key, Some(&caches.jobs))
                    .await?;
            }
            machine::Action::ApplyCurrent => {
                // The first apply of a revision does everything (namespace, stored plan, every
                // object, pruning); later ones only repair drifted Deployments from the cache.
                let first =
                    status.rollout_started_at.is_none() || status.revision != Some(generation);
                if first {
                    platform.prepare().await?;
                    platform.store_plan(&plan, &ns).await?;
                }
                platform
                    .apply(&plan, rollout.progress_deadline_seconds, first)
                    .await?;
                if first && had_earlier_revisions {
                    let keep = rel.spec.revision_history_limit.max(1) as usize + 1;
                    let protect: Vec<i64> = decision
                        .status
                        .last_succeeded_revision
                        .into_iter()
                        .collect();
                    platform.prune_plans(&name, &ns, keep, &protect).await?;
                }
            }
            machine::Action::ApplyRevision(rev) => {
                match platform.load_plan(&name, *rev, &ns).await? {
                    Some(old) => {
                        let first = status.phase != Some(Phase::RolledBack);
                        platform
                            .apply(&old, rollout.progress_deadline_seconds, first)
                            .await?
                    }
                    None => {
                        tracing::warn!(release = %name, revision = rev, "no stored plan to roll back to")
                    }
                }
            }
            machine::Action::Verify => {}
        }
    }
    if let Some(s) = services {
        decision.status.services = s;
    }
    let status_out: ReleaseStatus = decision.status;
    let uid = rel.uid().unwrap_or_default();
    let now = Instant::now();
    if decision.events.is_empty()
        && rel
            .status
            .as_ref()
            .is_some_and(|old| only_progress_differs(old, &status_out))
    {
        if let Some(wait) = caches.progress.wait(&uid, now) {
            // Progress only: written with the next change, or when the interval is up.
            return Ok(Requeue::requeue(wait.min(decision.requeue)));
        }
    }
    if write_status(rel.as_ref(), &status_out, ctx).await? {
        caches.progress.wrote(&uid, now);
    }
    for ev in &decision.events {
        publish(ctx, &rel, ev.warning, &ev.reason, &ev.message).await;
    }
    Ok(Requeue::requeue(decision.requeue))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ServiceStatus;

    fn svc(ready: i32) -> ServiceStatus {
        ServiceStatus {
            name: "api".into(),
            image: Some("example.test/api:1".into()),
            replicas: 2,
            ready_replicas: ready,
            updated_replicas: ready,
        }
    }

    fn rolling_out(ready: i32) -> ReleaseStatus {
        ReleaseStatus {
            phase: Some(Phase::RollingOut),
            services: vec![svc(ready)],
            ..Default::default()
        }
    }

    #[test]
    fn only_replica_counts_changing_is_progress() {
        assert!(only_progress_differs(&rolling_out(0), &rolling_out(1)));
        // Nothing changed: not a write at all, so not a progress write either.
        assert!(!only_progress_differs(&rolling_out(1), &rolling_out(1)));
        // A phase change is never held back, with or without new counts.
        let mut done = rolling_out(2);
        done.phase = Some(Phase::Succeeded);
        assert!(!only_progress_differs(&rolling_out(1), &done));
        let mut same_counts = rolling_out(1);
        same_counts.phase = Some(Phase::Succeeded);
        assert!(!only_progress_differs(&rolling_out(1), &same_counts));
    }

    #[test]
    fn progress_writes_wait_out_the_interval_per_object() {
        let p = ProgressWrites::default();
        let t0 = Instant::now();
        // Never written by this process (e.g. after a restart): no wait.
        assert_eq!(p.wait("a", t0), None);
        p.wrote("a", t0);
        assert_eq!(
            p.wait("a", t0 + Duration::from_secs(4)),
            Some(PROGRESS_WRITE_INTERVAL - Duration::from_secs(4))
        );
        assert_eq!(p.wait("b", t0 + Duration::from_secs(4)), None);
        assert_eq!(p.wait("a", t0 + PROGRESS_WRITE_INTERVAL), None);
        p.forget("a");
        assert_eq!(p.wait("a", t0 + Duration::from_secs(1)), None);
    }

    #[test]
    fn entries_past_the_interval_are_dropped() {
        let p = ProgressWrites::default();
        let t0 = Instant::now();
        p.wrote("gone", t0);
        p.wrote("a", t0 + Duration::from_secs(1));
        assert_eq!(p.len(), 2);
        p.wrote(
            "b",
            t0 + PROGRESS_WRITE_INTERVAL + Duration::from_millis(500),
        );
        assert_eq!(p.len(), 2, "the entry older than the interval is dropped");
        assert_eq!(p.wait("gone", t0 + PROGRESS_WRITE_INTERVAL), None);
    }
}
