//! The Environment controller: validates the platform block and secret sources, makes sure a
//! Kubernetes target namespace exists, and lists the Releases that target the Environment.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};

use super::status::{condition, write_status};
use super::watches::Listener;
use super::{error_policy, Context, Error};
use crate::api::{
    set_kstatus_conditions, Convergence, Environment, EnvironmentRelease, EnvironmentSpec, Release,
};
use crate::metrics::Metrics;

/// Builds the Environment controller stream and its object cache. A Release change wakes the
/// Environment it names, so `status.releases` follows.
/// `releases`: the shared Release watch (`super::watches`), its cache and this controller's
/// stream of changes.
pub fn controller(
    ctx: Arc<Context>,
    releases: (Store<Release>, Listener<Release>),
) -> (
    impl futures::Stream<Item = Result<(ObjectRef<Environment>, Action), impl std::error::Error>>,
    Store<Environment>,
) {
    let api: Api<Environment> = ctx.watched();
    // Many Release phase changes in a burst become one Environment status write.
    let controller = Controller::new(api, watcher::Config::default().any_semantic())
        .with_config(kube::runtime::controller::Config::default().debounce(Duration::from_secs(1)));
    let store = controller.store();
    let (releases, release_events) = releases;
    let ectx = Arc::new(EnvironmentContext {
        base: ctx,
        releases,
    });
    let stream = controller
        .watches_stream(release_events, |r: Release| {
            r.namespace()
                .map(|ns| ObjectRef::new(&r.spec.environment).within(&ns))
        })
        .shutdown_on_signal()
        .run(
            reconcile,
            |e, err, ctx: Arc<EnvironmentContext>| error_policy(e, err, ctx.base.clone()),
            ectx,
        );
    (stream, store)
}

/// What the Environment reconcile gets: the shared context and the Release watch cache.
pub struct EnvironmentContext {
    pub base: Arc<Context>,
    pub releases: Store<Release>,
}

/// A problem with the spec that a person must fix, naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecProblem {
    pub reason: &'static str,
    pub message: String,
}

/// Checks what the schema cannot: which secret sources the chosen platform can serve, and
/// platforms not built yet. Pure.
pub fn validate(name: &str, spec: &EnvironmentSpec) -> Option<SpecProblem> {
    let platform = spec.platform.kind_name();
    for (i, s) in spec.secrets.iter().enumerate() {
        let source = s.from.kind_name();
        let servable = match source {
            "secretKeyRef" => true,
            "azureKeyVault" => platform == "azureContainerApps",
            "awsSecretsManager" => platform == "ecs",
            _ => false,
        };
        if !servable {
            return Some(SpecProblem {
                reason: "InvalidSpec",
                message: format!(
                    "Environment {name}: spec.secrets[{i}].from.{source} (variable {}) cannot be served by platform.{platform}; \
                     use secretKeyRef{}",
                    s.name,
                    match platform {
                        "azureContainerApps" => " or azureKeyVault",
                        "ecs" => " or awsSecretsManager",
                        _ => "",
                    }
                ),
            });
        }
    }
    if platform != "kubernetes" {
        return Some(SpecProblem {
            reason: "PlatformNotSupported",
            message: format!(
                "Environment {name}: spec.platform.{platform} is not supported by this Slipway version yet; use platform.kubernetes"
            ),
        });
    }
    None
}

/// The namespace workloads of this Environment go to.
pub fn target_namespace(env: &Environment) -> String {
    env.spec
        .platform
        .kubernetes
        .as_ref()
        .and_then(|k| k.namespace.clone())
        .unwrap_or_else(|| env.namespace().unwrap_or_default())
}

/// Reconciles one Environment.
pub async fn reconcile(
    env: Arc<Environment>,
    ectx: Arc<EnvironmentContext>,
) -> Result<Action, Error> {
    let ctx = &ectx.base;
    let started = Instant::now();
    let labels = Metrics::kind("Environment");
    if ctx.written.is_stale(env.as_ref()) {
        ctx.metrics.stale_reads.get_or_create(&labels).inc();
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    ctx.metrics.reconciliations.get_or_create(&labels).inc();
    let ns = env.namespace().ok_or_else(|| Error::MissingNamespace {
        kind: "Environment",
        name: env.name_any(),
    })?;
    let name = env.name_any();
    let g = env.metadata.generation;

    let problem = validate(&name, &env.spec);
    if problem.is_none() {
        crate::platform::kubernetes::ops::ensure_namespace(&ctx.client, &target_namespace(&env))
            .await?;
    }
    let mut listed: Vec<EnvironmentRelease> = ectx
        .releases
        .state()
        .into_iter()
        .filter(|r| r.namespace().as_deref() == Some(ns.as_str()) && r.spec.environment == name)
        .map(|r| EnvironmentRelease {
            app: Some(r.spec.app.clone().unwrap_or_else(|| r.name_any())),
            name: r.name_any(),
            version: r.status.as_ref().and_then(|s| s.version.clone()),
            phase: r
                .status
                .as_ref()
                .and_then(|s| s.phase)
                .map(|p| p.as_str().to_string()),
        })
        .collect();
    listed.sort_by(|a, b| a.name.cmp(&b.name));

    let mut st = env.status.clone().unwrap_or_default();
    st.observed_generation = g;
    st.platform = Some(env.spec.platform.kind_name().to_string());
    st.releases = listed;
    let (state, reason, message) = match &problem {
        None => (
            Convergence::Ready,
            "Ready",
            format!(
                "workloads go to namespace {}{}",
                target_namespace(&env),
                if env.spec.freeze {
                    "; frozen: new rollouts wait"
                } else {
                    ""
                }
            ),
        ),
        Some(p) => (Convergence::Stalled, p.reason, p.message.clone()),
    };
    set_kstatus_conditions(&mut st.conditions, state, |t, s| {
        condition(t, s, reason, message.clone(), g)
    });
    write_status(env.as_ref(), &st, ctx).await?;
    ctx.metrics
        .duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    Ok(Action::requeue(Duration::from_secs(300)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(platform: serde_json::Value, secrets: serde_json::Value) -> EnvironmentSpec {
        serde_json::from_value(serde_json::json!({ "platform": platform, "secrets": secrets }))
            .unwrap()
    }

    #[test]
    fn a_source_the_platform_cannot_serve_names_the_field() {
        let cases = [
            (
                serde_json::json!({"kubernetes": {}}),
                serde_json::json!([{"name": "A", "from": {"secretKeyRef": {"name": "s", "key": "k"}}}]),
                None,
            ),
            (
                serde_json::json!({"kubernetes": {}}),
                serde_json::json!([{"name": "A", "from": {"secretKeyRef": {"name": "s", "key": "k"}}},
                                   {"name": "DB", "from": {"azureKeyVault": {"vaultUrl": "https://kv.vault.azure.net", "secretName": "db"}}}]),
                Some("spec.secrets[1].from.azureKeyVault"),
            ),
            (
                serde_json::json!({"kubernetes": {}}),
                serde_json::json!([{"name": "DB", "from": {"awsSecretsManager": {"arn": "arn:aws:secretsmanager:x"}}}]),
                Some("spec.secrets[0].from.awsSecretsManager"),
            ),
        ];
        for (platform, secrets, want) in cases {
            let got = validate("prod", &spec(platform, secrets));
            match want {
                None => assert_eq!(got, None),
                Some(field) => {
                    let p = got.expect("a problem");
                    assert_eq!(p.reason, "InvalidSpec");
                    assert!(p.message.contains(field), "{}", p.message);
                    assert!(p.message.contains("Environment prod"), "{}", p.message);
                }
            }
        }
    }

    #[test]
    fn platforms_not_built_yet_say_so() {
        let p = validate(
            "prod",
            &spec(
                serde_json::json!({"ecs": {"region": "eu-west-2", "cluster": "c", "subnets": ["s"]}}),
                serde_json::json!([{"name": "DB", "from": {"awsSecretsManager": {"arn": "arn:aws:secretsmanager:x"}}}]),
            ),
        )
        .unwrap();
        assert_eq!(p.reason, "PlatformNotSupported");
        assert!(p.message.contains("spec.platform.ecs"));
    }
}
