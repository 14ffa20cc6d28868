//! Writing status: observedGeneration, conditions, and the skip of no-op writes.

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Context, Error};
use crate::api::{
    Condition, Environment, EnvironmentStatus, Release, ReleaseStatus, ScaledWorker,
    ScaledWorkerStatus,
};

/// The field manager of every write Slipway makes.
pub use crate::FIELD_MANAGER as MANAGER;

/// A Slipway object whose status carries observedGeneration and conditions.
pub trait StatusObject:
    Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
    + Clone
    + Serialize
    + DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    type Status: Serialize + Default + Clone + PartialEq + Send;
    fn status(&self) -> Option<&Self::Status>;
    fn conditions(status: &mut Self::Status) -> &mut Vec<Condition>;
    fn observed_generation(status: &mut Self::Status) -> &mut Option<i64>;
}

macro_rules! status_object {
    ($kind:ty, $status:ty) => {
        impl StatusObject for $kind {
            type Status = $status;
            fn status(&self) -> Option<&$status> {
                self.status.as_ref()
            }
            fn conditions(status: &mut $status) -> &mut Vec<Condition> {
                &mut status.conditions
            }
            fn observed_generation(status: &mut $status) -> &mut Option<i64> {
                &mut status.observed_generation
            }
        }
    };
}
status_object!(Environment, EnvironmentStatus);
status_object!(Release, ReleaseStatus);
status_object!(ScaledWorker, ScaledWorkerStatus);

/// Current time as an RFC 3339 string with second precision, as metav1.Time serialises.
pub fn now() -> String {
    crate::api::format_time(chrono::Utc::now())
}

/// Builds a condition stamped with the object's generation and the current time.
pub fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) -> Condition {
    Condition::new(type_, status, reason, message, generation, now())
}

/// Writes `new` as the object's status by server-side apply, unless it equals the status the
/// API server already holds. Returns whether a write was made.
pub async fn write_status<K: StatusObject>(
    obj: &K,
    new: &K::Status,
    ctx: &Context,
) -> Result<bool, Error> {
    if obj.status() == Some(new) {
        return Ok(false);
    }
    let ns = obj.namespace().ok_or_else(|| Error::MissingNamespace {
        kind: kind_name::<K>(),
        name: obj.name_any(),
    })?;
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": new,
    });
    let written = api
        .patch_status(
            &obj.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    ctx.written.record(&written);
    ctx.metrics
        .status_writes
        .get_or_create(&crate::metrics::Metrics::kind(&K::kind(&())))
        .inc();
    Ok(true)
}

fn kind_name<K: Resource<DynamicType = ()>>() -> &'static str {
    match K::kind(&()).as_ref() {
        "Environment" => "Environment",
        "Release" => "Release",
        _ => "ScaledWorker",
    }
}
