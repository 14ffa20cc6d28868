//! The platform-neutral desired state of one Release revision.
//!
//! `resolve` merges a Release with its Environment (defaults, secrets, registry) into a
//! [`RevisionPlan`]: everything a Platform needs to render its own objects, and what is stored
//! per revision so that a rollback can restore it exactly. Pure: no I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::{EnvVar, Environment, Release, Replicas, Resources, SecretSource};

/// Everything one revision deploys.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RevisionPlan {
    /// Release name.
    pub release: String,
    /// App name (defaults to the Release name).
    pub app: String,
    /// Version of this revision.
    pub version: String,
    /// Revision number (the Release generation it was planned from).
    pub revision: i64,
    pub services: Vec<ServicePlan>,
    pub jobs: Vec<JobPlan>,
    pub migration: Option<MigrationPlan>,
    /// Image pull secret from the Environment's registry.
    pub pull_secret: Option<String>,
}

/// How many replicas a service runs.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", tag = "mode")]
pub enum ReplicaPolicy {
    /// `min == max`: a fixed count.
    Fixed { count: i32 },
    /// `min < max`: CPU autoscaling between the bounds.
    Autoscaled { min: i32, max: i32 },
    /// A ScaledWorker owns the count; the Release never sets it.
    External,
}

/// An environment variable: a plain value or a reference to a secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EnvPlan {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretSource>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PortPlan {
    pub name: String,
    pub port: i32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HealthPlan {
    pub path: String,
    /// Resolved port number.
    pub port: i32,
    pub period_seconds: i32,
    pub failure_threshold: i32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IngressPlan {
    pub external: bool,
    pub host: Option<String>,
    pub path: String,
    pub port: i32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServicePlan {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub ports: Vec<PortPlan>,
    pub ingress: Option<IngressPlan>,
    pub replicas: ReplicaPolicy,
    pub resources: Resources,
    pub env: Vec<EnvPlan>,
    pub health: Option<HealthPlan>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JobPlan {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub schedule: String,
    pub time_zone: Option<String>,
    pub timeout_seconds: Option<i32>,
    pub retries: i32,
    pub resources: Resources,
    pub env: Vec<EnvPlan>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MigrationPlan {
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub timeout_seconds: i32,
    pub retries: i32,
    pub resources: Resources,
    pub env: Vec<EnvPlan>,
}

/// A spec problem found while resolving, naming the object and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PlanError {
    pub field: String,
    pub message: String,
}

/// Merges env lists: later lists override earlier ones by name, order of first appearance kept.
fn merge_env(layers: &[&[EnvVar]]) -> Vec<EnvPlan> {
    let mut order: Vec<String> = vec![];
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    for layer in layers {
        for e in *layer {
            if !values.contains_key(&e.name) {
                order.push(e.name.clone());
            }
            values.insert(e.name.clone(), e.value.clone());
        }
    }
    order
        .into_iter()
        .map(|n| EnvPlan {
            value: values.get(&n).cloned(),
            name: n,
            secret: None,
        })
        .collect()
}

fn with_secrets(mut env: Vec<EnvPlan>, environment: &Environment) -> Vec<EnvPlan> {
    for s in &environment.spec.secrets {
        env.retain(|e| e.name != s.name);
        env.push(EnvPlan {
            name: s.name.clone(),
            value: None,
            secret: Some(s.from.clone()),
        });
    }
    env
}

fn merge_resources(specific: Option<&Resources>, default: Option<&Resources>) -> Resources {
    Resources {
        cpu: specific
            .and_then(|r| r.cpu.clone())
            .or_else(|| default.and_then(|r| r.cpu.clone())),
        memory: specific
            .and_then(|r| r.memory.clone())
            .or_else(|| default.and_then(|r| r.memory.clone())),
    }
}

/// Turns replica bounds into a policy. `scaled_externally` is true when a ScaledWorker
/// targets the service.
pub fn replica_policy(bounds: Option<&Replicas>, scaled_externally: bool) -> ReplicaPolicy {
    if scaled_externally {
        return ReplicaPolicy::External;
    }
    match bounds {
        None => ReplicaPolicy::Fixed { count: 1 },
        Some(r) if r.min == r.max => ReplicaPolicy::Fixed { count: r.min },
        Some(r) => ReplicaPolicy::Autoscaled {
            min: r.min.max(1),
            max: r.max,
        },
    }
}

/// Resolves a Release against its Environment. `scaled` lists the services a ScaledWorker
/// targets.
pub fn resolve(
    release: &Release,
    environment: &Environment,
    scaled: &[String],
) -> Result<RevisionPlan, PlanError> {
    let spec = &release.spec;
    let name = release.metadata.name.clone().unwrap_or_default();
    let defaults = environment.spec.defaults.clone().unwrap_or_default();
    let mut services = vec![];
    for (i, s) in spec.services.iter().enumerate() {
        let ports: Vec<PortPlan> = s
            .ports
            .iter()
            .map(|p| PortPlan {
                name: p.name.clone(),
                port: p.port,
            })
            .collect();
        let health = match &s.health_check {
            None => None,
            Some(h) => {
                let port = match &h.port {
                    Some(crate::api::PortRef::Number(n)) => *n,
                    Some(crate::api::PortRef::Name(n)) => ports
                        .iter()
                        .find(|p| &p.name == n)
                        .map(|p| p.port)
                        .ok_or_else(|| PlanError {
                            field: format!("spec.services[{i}].healthCheck.port"),
                            message: format!("no port named {n:?} in spec.services[{i}].ports"),
                        })?,
                    None => ports.first().map(|p| p.port).ok_or_else(|| PlanError {
                        field: format!("spec.services[{i}].healthCheck.port"),
                        message: "set a port: the service has no ports to default to".into(),
                    })?,
                };
                Some(HealthPlan {
                    path: h.path.clone(),
                    port,
                    period_seconds: h.period_seconds,
                    failure_threshold: h.failure_threshold,
                })
            }
        };
        let ingress = match &s.ingress {
            None => None,
            Some(ing) => Some(IngressPlan {
                external: ing.external,
                host: ing.host.clone(),
                path: ing.path.clone(),
                port: ports.first().map(|p| p.port).ok_or_else(|| PlanError {
                    field: format!("spec.services[{i}].ingress"),
                    message: "a service with ingress needs at least one port".into(),
                })?,
            }),
        };
        let bounds = s.replicas.as_ref().or(defaults.replicas.as_ref());
        services.push(ServicePlan {
            name: s.name.clone(),
            image: s.image.clone(),
            command: s.command.clone(),
            args: s.args.clone(),
            ports,
            ingress,
            replicas: replica_policy(bounds, scaled.contains(&s.name)),
            resources: merge_resources(s.resources.as_ref(), defaults.resources.as_ref()),
            env: with_secrets(merge_env(&[&defaults.env, &s.env]), environment),
            health,
        });
    }
    let jobs = spec
        .jobs
        .iter()
        .map(|j| JobPlan {
            name: j.name.clone(),
            image: j.image.clone(),
            command: j.command.clone(),
            args: j.args.clone(),
            schedule: j.schedule.clone(),
            time_zone: j.time_zone.clone(),
            timeout_seconds: j.timeout_seconds,
            retries: j.retries,
            resources: merge_resources(None, defaults.resources.as_ref()),
            env: with_secrets(merge_env(&[&defaults.env, &j.env]), environment),
        })
        .collect();
    let migration = spec.migration.as_ref().map(|m| MigrationPlan {
        image: m.image.clone(),
        command: m.command.clone(),
        args: m.args.clone(),
        timeout_seconds: m.timeout_seconds,
        retries: m.retries,
        resources: merge_resources(None, defaults.resources.as_ref()),
        env: with_secrets(merge_env(&[&defaults.env, &m.env]), environment),
    });
    Ok(RevisionPlan {
        app: spec.app.clone().unwrap_or_else(|| name.clone()),
        release: name,
        version: spec.version.clone(),
        revision: release.metadata.generation.unwrap_or(1),
        services,
        jobs,
        migration,
        pull_secret: environment
            .spec
            .registry
            .as_ref()
            .and_then(|r| r.pull_secret_name.clone()),
    })
}
