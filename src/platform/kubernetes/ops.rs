//! Carrying out a revision plan on Kubernetes: server-side apply of the rendered objects
//! (skipped when the stored `slipway.dev/plan-hash` already matches, so a converged Release
//! makes no write), migration Jobs, rollout observation, stored plans for rollback, and
//! cleanup by label.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::NamespaceResourceScope;
use kube::api::ObjectMeta;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::render::{self, Target, LABEL_RELEASE};
use crate::api::ServiceStatus;
use crate::release::machine::{MigrationObserved, RolloutObserved};
use crate::release::plan::{ReplicaPolicy, RevisionPlan};

pub use crate::FIELD_MANAGER as MANAGER;

/// The Kubernetes platform for one Release in one target namespace.
pub struct KubernetesPlatform {
    pub client: Client,
    pub target: Target,
    /// Writes made, for the no-op-reconcile metric and benchmark.
    pub writes: std::sync::atomic::AtomicU64,
    /// The target namespace differs from the Release's: owner references cannot cross
    /// namespaces (the garbage collector would delete the objects), so they are left out and
    /// the Release's finalizer cleans up by label instead.
    cross_namespace: bool,
    /// Watch cache of the Deployments Slipway manages, read instead of the API when set.
    deployments: Option<Store<Deployment>>,
    /// Earlier revisions may have left objects behind: a full apply prunes.
    prune: bool,
}

/// Creates `obj` unless an object of that name exists. Returns whether it created one.
pub async fn create_if_absent<K>(api: &Api<K>, obj: &K) -> Result<bool, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Creates a namespace (labelled as Slipway's) when it is missing. Returns whether it did.
pub async fn ensure_namespace(client: &Client, name: &str) -> Result<bool, kube::Error> {
    let api: Api<Namespace> = Api::all(client.clone());
    if api.get_opt(name).await?.is_some() {
        return Ok(false);
    }
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name, "labels": { "app.kubernetes.io/managed-by": "slipway" } }
    }))
    .expect("a namespace literal");
    create_if_absent(&api, &ns).await
}

/// True when the live object carries the plan hash the desired one was rendered with.
fn same_plan(live: &ObjectMeta, desired: &ObjectMeta) -> bool {
    matches!(
        (render::observed_plan_hash(live), render::observed_plan_hash(desired)),
        (Some(a), Some(b)) if a == b
    )
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

impl KubernetesPlatform {
    pub fn new(client: Client, target: Target) -> Self {
        KubernetesPlatform {
            client,
            target,
            writes: Default::default(),
            cross_namespace: false,
            deployments: None,
            prune: true,
        }
    }

    /// Whether a full apply looks for objects earlier revisions left behind (not needed for
    /// a Release's first revision).
    pub fn with_pruning(mut self, prune: bool) -> Self {
        self.prune = prune;
        self
    }

    /// Reads Deployments from this watch cache instead of the API server.
    pub fn with_deployment_cache(mut self, store: Store<Deployment>) -> Self {
        self.deployments = Some(store);
        self
    }

    /// A Deployment of the target namespace: from the cache when there is one.
    async fn deployment(&self, name: &str) -> Result<Option<Deployment>, kube::Error> {
        match &self.deployments {
            Some(store) => Ok(store
                .get(&ObjectRef::new(name).within(&self.target.namespace))
                .map(|d| d.as_ref().clone())),
            None => self.api::<Deployment>().get_opt(name).await,
        }
    }

    /// Marks the target as outside the Release's namespace.
    pub fn cross_namespace(mut self, cross: bool) -> Self {
        self.cross_namespace = cross;
        self
    }

    fn apply_body<K: k8s_openapi::Resource + Serialize>(&self, obj: &K) -> serde_json::Value {
        let mut v = render::to_apply(obj);
        if self.cross_namespace {
            if let Some(meta) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
                meta.remove("ownerReferences");
            }
        }
        v
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        Api::namespaced(self.client.clone(), &self.target.namespace)
    }

    fn wrote(&self) {
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Creates the target namespace when it is missing.
    pub async fn prepare(&self) -> Result<(), kube::Error> {
        if !self.cross_namespace {
            // The Release's own namespace: it exists, the Release is in it.
            return Ok(());
        }
        if ensure_namespace(&self.client, &self.target.namespace).await? {
            self.wrote();
        }
        Ok(())
    }

    /// Applies one object unless the live one carries the same plan hash.
    async fn apply_if_changed<K>(&self, obj: &K) -> Result<bool, kube::Error>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + k8s_openapi::Resource
            + Clone
            + DeserializeOwned
            + Serialize
            + std::fmt::Debug,
    {
        let api: Api<K> = self.api();
        let name = obj.name_any();
        if let Some(live) = api.get_opt(&name).await? {
            if same_plan(live.meta(), obj.meta()) {
                return Ok(false);
            }
        }
        self.patch_apply(obj).await?;
        Ok(true)
    }

    /// Applies a Deployment unless the one in the cache (or API) already runs its plan.
    async fn apply_deployment_if_changed(&self, d: &Deployment) -> Result<(), kube::Error> {
        let live = self.deployment(&d.name_any()).await?;
        if !live.is_some_and(|l| same_plan(l.meta(), d.meta())) {
            self.patch_apply(d).await?;
        }
        Ok(())
    }

    /// Server-side apply of one object.
    async fn patch_apply<K>(&self, obj: &K) -> Result<(), kube::Error>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + k8s_openapi::Resource
            + Clone
            + DeserializeOwned
            + Serialize
            + std::fmt::Debug,
    {
        self.api::<K>()
            .patch(
                &obj.name_any(),
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(self.apply_body(obj)),
            )
            .await?;
        self.wrote();
        Ok(())
    }

    /// Deletes objects of kind K labelled for this Release whose names are not in `keep`.
    async fn prune<K>(&self, release: &str, keep: &BTreeSet<String>) -> Result<(), kube::Error>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = self.api();
        let list = api
            .list_metadata(&ListParams::default().labels(&format!("{LABEL_RELEASE}={release}")))
            .await?;
        for o in list.items {
            let name = o.name_any();
            if !keep.contains(&name) {
                match api.delete(&name, &DeleteParams::background()).await {
                    Ok(_) => self.wrote(),
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Applies every service and scheduled job of the plan and deletes the ones removed from it
    /// (`full`), or, on later reconciles of the same revision, only re-applies Deployments whose
    /// cached plan hash drifted: a converged Release then costs no request at all.
    pub async fn apply(
        &self,
        plan: &RevisionPlan,
        progress_deadline_seconds: i32,
        full: bool,
    ) -> Result<(), kube::Error> {
        if !full {
            for svc in &plan.services {
                let d = render::deployment(plan, svc, &self.target, progress_deadline_seconds);
                self.apply_deployment_if_changed(&d).await?;
            }
            return Ok(());
        }
        let t = &self.target;
        let mut deployments = BTreeSet::new();
        let mut services = BTreeSet::new();
        let mut ingresses = BTreeSet::new();
        let mut hpas = BTreeSet::new();
        let mut cronjobs = BTreeSet::new();
        for svc in &plan.services {
            let d = render::deployment(plan, svc, t, progress_deadline_seconds);
            deployments.insert(d.name_any());
            self.apply_deployment_if_changed(&d).await?;
            if let Some(s) = render::service(plan, svc, t) {
                services.insert(s.name_any());
                self.apply_if_changed(&s).await?;
            }
            if let Some(i) = render::ingress(plan, svc, t) {
                ingresses.insert(i.name_any());
                self.apply_if_changed(&i).await?;
            }
            if let Some(h) = render::hpa(plan, svc, t) {
                hpas.insert(h.name_any());
                self.apply_if_changed(&h).await?;
            }
        }
        for job in &plan.jobs {
            let c = render::cron_job(plan, job, t);
            cronjobs.insert(c.name_any());
            self.apply_if_changed(&c).await?;
        }
        if !self.prune {
            return Ok(());
        }
        self.prune::<Deployment>(&plan.release, &deployments)
            .await?;
        self.prune::<Service>(&plan.release, &services).await?;
        self.prune::<Ingress>(&plan.release, &ingresses).await?;
        self.prune::<HorizontalPodAutoscaler>(&plan.release, &hpas)
            .await?;
        self.prune::<CronJob>(&plan.release, &cronjobs).await?;
        Ok(())
    }

    /// Reports whether every service of the plan runs it with its replicas available.
    pub async fn observe(
        &self,
        plan: &RevisionPlan,
        progress_deadline_seconds: i32,
    ) -> Result<(RolloutObserved, Vec<ServiceStatus>), kube::Error> {
        let mut all = true;
        let mut statuses = vec![];
        for svc in &plan.services {
            let want = render::deployment(plan, svc, &self.target, progress_deadline_seconds);
            let name = want.name_any();
            let live = self.deployment(&name).await?;
            let Some(d) = live else {
                all = false;
                statuses.push(ServiceStatus {
                    name: svc.name.clone(),
                    image: Some(svc.image.clone()),
                    replicas: 0,
                    ready_replicas: 0,
                    updated_replicas: 0,
                });
                continue;
            };
            let same_plan = same_plan(d.meta(), want.meta());
            let spec_replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let st = d.status.clone().unwrap_or_default();
            let observed =
                st.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0);
            let updated = st.updated_replicas.unwrap_or(0);
            let available = st.available_replicas.unwrap_or(0);
            let total = st.replicas.unwrap_or(0);
            let done = same_plan
                && observed
                && updated >= spec_replicas
                && available >= spec_replicas
                && total == updated
                && (spec_replicas > 0 || svc.replicas == ReplicaPolicy::External);
            all &= done;
            statuses.push(ServiceStatus {
                name: svc.name.clone(),
                image: Some(svc.image.clone()),
                replicas: spec_replicas,
                ready_replicas: st.ready_replicas.unwrap_or(0),
                updated_replicas: updated,
            });
        }
        Ok((
            RolloutObserved {
                available: all,
                failed: None,
            },
            statuses,
        ))
    }

    /// The state of a migration Job.
    pub async fn migration(
        &self,
        name: &str,
        cache: Option<&Store<Job>>,
    ) -> Result<MigrationObserved, kube::Error> {
        let job = match cache {
            Some(c) if !self.cross_namespace => c
                .get(&ObjectRef::new(name).within(&self.target.namespace))
                .map(|j| j.as_ref().clone()),
            _ => self.api::<Job>().get_opt(name).await?,
        };
        let Some(job) = job else {
            return Ok(MigrationObserved::Absent);
        };
        let conds = job
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        for c in &conds {
            if c.status == "True" && c.type_ == "Complete" {
                return Ok(MigrationObserved::Succeeded);
            }
            if c.status == "True" && c.type_ == "Failed" {
                let why = [c.reason.clone(), c.message.clone()]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(": ");
                return Ok(MigrationObserved::Failed(if why.is_empty() {
                    "Job failed".into()
                } else {
                    why
                }));
            }
        }
        Ok(MigrationObserved::Running)
    }

    /// Creates the migration Job (an existing one of that name is left alone).
    pub async fn start_migration(
        &self,
        plan: &RevisionPlan,
        attempt_key: &str,
        cache: Option<&Store<Job>>,
    ) -> Result<(), kube::Error> {
        let Some(m) = &plan.migration else {
            return Ok(());
        };
        let name = render::migration_job_name(&plan.release, plan.revision, attempt_key);
        if let Some(c) = cache.filter(|_| !self.cross_namespace) {
            if c.get(&ObjectRef::new(&name).within(&self.target.namespace))
                .is_some()
            {
                return Ok(());
            }
        }
        let job: Job = serde_json::from_value(self.apply_body(&render::migration_job(
            plan,
            m,
            &self.target,
            attempt_key,
        )))
        .expect("a rendered Job round-trips");
        let api: Api<Job> = self.api();
        if create_if_absent(&api, &job).await? {
            self.wrote();
        }
        Ok(())
    }

    fn revision_name(release: &str, revision: i64) -> String {
        let mut base: String = release.chars().take(40).collect();
        while base.ends_with('-') {
            base.pop();
        }
        format!("{base}-r{revision}")
    }

    /// Stores a revision's plan (a ControllerRevision owned by the Release) for rollback.
    pub async fn store_plan(
        &self,
        plan: &RevisionPlan,
        release_namespace: &str,
    ) -> Result<(), kube::Error> {
        let api: Api<ControllerRevision> = Api::namespaced(self.client.clone(), release_namespace);
        let name = Self::revision_name(&plan.release, plan.revision);
        let cr: ControllerRevision = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name,
                "labels": { LABEL_RELEASE: plan.release, "app.kubernetes.io/managed-by": "slipway" },
                "ownerReferences": [self.target.owner],
            },
            "revision": plan.revision,
            "data": plan,
        }))
        .expect("a ControllerRevision literal");
        if create_if_absent(&api, &cr).await? {
            self.wrote();
        }
        Ok(())
    }

    /// Loads a stored plan.
    pub async fn load_plan(
        &self,
        release: &str,
        revision: i64,
        release_namespace: &str,
    ) -> Result<Option<RevisionPlan>, kube::Error> {
        let api: Api<ControllerRevision> = Api::namespaced(self.client.clone(), release_namespace);
        let Some(cr) = api.get_opt(&Self::revision_name(release, revision)).await? else {
            return Ok(None);
        };
        Ok(cr.data.and_then(|d| serde_json::from_value(d.0).ok()))
    }

    /// Deletes stored plans beyond the newest `keep`, never the one in `protect`.
    pub async fn prune_plans(
        &self,
        release: &str,
        release_namespace: &str,
        keep: usize,
        protect: &[i64],
    ) -> Result<(), kube::Error> {
        let api: Api<ControllerRevision> = Api::namespaced(self.client.clone(), release_namespace);
        let mut list = api
            .list(&ListParams::default().labels(&format!("{LABEL_RELEASE}={release}")))
            .await?
            .items;
        if list.len() <= keep {
            return Ok(());
        }
        list.sort_by_key(|c| std::cmp::Reverse(c.revision));
        for cr in list.into_iter().skip(keep) {
            if protect.contains(&cr.revision) {
                continue;
            }
            match api
                .delete(&cr.name_any(), &DeleteParams::background())
                .await
            {
                Ok(_) => self.wrote(),
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Deletes everything labelled for the Release in the target namespace (finalizer cleanup).
    pub async fn delete_all(&self, release: &str) -> Result<(), kube::Error> {
        let none = BTreeSet::new();
        self.prune::<Deployment>(release, &none).await?;
        self.prune::<Service>(release, &none).await?;
        self.prune::<Ingress>(release, &none).await?;
        self.prune::<HorizontalPodAutoscaler>(release, &none)
            .await?;
        self.prune::<CronJob>(release, &none).await?;
        self.prune::<Job>(release, &none).await?;
        Ok(())
    }
}
