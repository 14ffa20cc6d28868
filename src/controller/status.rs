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

/// The JSON merge patch (RFC 7386) that turns `old` into `new`: keys whose values changed
/// (objects recursively, arrays and scalars whole) and `null` for keys `new` no longer has.
pub fn merge_patch(old: &serde_json::Value, new: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let mut out = serde_json::Map::new();
            for (k, nv) in n {
                match o.get(k) {
                    Some(ov) if ov == nv => {}
                    Some(ov) => {
                        out.insert(k.clone(), merge_patch(ov, nv));
                    }
                    None => {
                        out.insert(k.clone(), nv.clone());
                    }
                }
            }
            for k in o.keys().filter(|k| !n.contains_key(*k)) {
                out.insert(k.clone(), Value::Null);
            }
            Value::Object(out)
        }
        _ => new.clone(),
    }
}

/// Writes `new` as the object's status, unless it equals the status the API server already
/// holds. Returns whether a write was made.
///
/// The write is a JSON merge patch of the difference from the cached status, not a
/// server-side apply: Slipway is the only writer of these statuses and the cached copy is at
/// least as new as this process's last write (`freshness`), while an apply makes the API
/// server merge the whole status against its field-ownership record on every write. In
/// bench-release's API server profiles, status applies were the largest single part of what
/// the operator added (about 2 of 24 CPU seconds in a 20 s window).
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
    let old = serde_json::to_value(obj.status()).expect("a status serializes");
    let new_value = serde_json::to_value(new).expect("a status serializes");
    let patch = serde_json::json!({ "status": merge_patch(&old, &new_value) });
    let params = PatchParams {
        field_manager: Some(MANAGER.to_string()),
        ..PatchParams::default()
    };
    let written = api
        .patch_status(&obj.name_any(), &params, &Patch::Merge(&patch))
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

#[cfg(test)]
mod tests {
    use super::merge_patch;
    use serde_json::json;

    #[test]
    fn merge_patch_carries_changes_and_removals_only() {
        let old = json!({ "phase": "RollingOut", "revision": 3,
                          "migration": { "job": "m-3", "state": "Running", "startedAt": "t0" },
                          "verifyAttempts": 1,
                          "conditions": [ { "type": "Ready", "status": "False" } ] });
        let new = json!({ "phase": "Succeeded", "revision": 3,
                          "migration": { "job": "m-3", "state": "Succeeded", "startedAt": "t0" },
                          "conditions": [ { "type": "Ready", "status": "True" } ] });
        assert_eq!(
            merge_patch(&old, &new),
            json!({ "phase": "Succeeded",
                    "migration": { "state": "Succeeded" },
                    "verifyAttempts": null,
                    "conditions": [ { "type": "Ready", "status": "True" } ] })
        );
        assert_eq!(merge_patch(&old, &old), json!({}));
        // No status yet: the whole new one.
        assert_eq!(merge_patch(&json!(null), &new), new);
    }

    /// Applying the patch the RFC 7386 way to `old` gives `new`, for nested shapes too.
    #[test]
    fn applying_the_patch_gives_the_new_value() {
        fn apply(target: &mut serde_json::Value, patch: &serde_json::Value) {
            if let serde_json::Value::Object(p) = patch {
                if !target.is_object() {
                    *target = json!({});
                }
                let t = target.as_object_mut().unwrap();
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        apply(t.entry(k.clone()).or_insert(serde_json::Value::Null), v);
                    }
                }
            } else {
                *target = patch.clone();
            }
        }
        let cases = [
            (
                json!({"a": {"b": 1, "c": [1, 2]}, "d": "x"}),
                json!({"a": {"c": [2]}, "e": {"f": true}}),
            ),
            (json!({"a": 1}), json!({"a": {"b": 2}})),
            (json!({"a": {"b": 2}}), json!({"a": 1})),
            (
                json!({}),
                json!({"services": [{"name": "api", "readyReplicas": 1}]}),
            ),
        ];
        for (old, new) in cases {
            let mut t = old.clone();
            apply(&mut t, &merge_patch(&old, &new));
            assert_eq!(t, new, "from {old}");
        }
    }
}
