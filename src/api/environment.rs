//! The Environment kind: where workloads run and which rules gate rollouts into it.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Condition, EnvVar, Replicas, Resources};

/// A deployment target (dev, staging, prod): where workloads run and which rules gate
/// rollouts into it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "slipway.dev",
    version = "v1alpha1",
    kind = "Environment",
    plural = "environments",
    shortname = "env",
    shortname = "envs",
    category = "slipway",
    namespaced,
    doc = "An Environment is a deployment target (dev, staging, prod): where workloads run (a namespace, Azure Container Apps or AWS ECS) and the rules that gate rollouts into it (promotion, approval, freeze).",
    status = "EnvironmentStatus",
    printcolumn = r#"{"name":"Platform","type":"string","jsonPath":".status.platform","description":"Where workloads run"}"#,
    printcolumn = r#"{"name":"Frozen","type":"boolean","jsonPath":".spec.freeze","priority":1}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentSpec {
    /// Where workloads run: exactly one of `kubernetes`, `azureContainerApps` or `ecs`.
    pub platform: Platform,
    /// Container registry the images come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<Registry>,
    /// Promotion gate: versions must have succeeded in another Environment first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion: Option<Promotion>,
    /// True blocks new rollouts into this Environment; rollbacks are still allowed.
    #[serde(default)]
    pub freeze: bool,
    /// Settings applied to every service unless the Release overrides them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<ServiceDefaults>,
    /// Secrets exposed as environment variables to every service and the migration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub secrets: Vec<SecretEnv>,
}

/// Where workloads run. Exactly one block must be set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "(has(self.kubernetes) ? 1 : 0) + (has(self.azureContainerApps) ? 1 : 0) + (has(self.ecs) ? 1 : 0) == 1",
     "message": "set exactly one of platform.kubernetes, platform.azureContainerApps or platform.ecs"}
]))]
pub struct Platform {
    /// A namespace of the cluster the operator runs in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesPlatform>,
    /// Azure Container Apps in one managed environment, reached over the ARM REST API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure_container_apps: Option<AzureContainerAppsPlatform>,
    /// AWS ECS services on Fargate in one cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecs: Option<EcsPlatform>,
}

impl Platform {
    /// The name of the platform block that is set, as printed in `status.platform`.
    pub fn kind_name(&self) -> &'static str {
        match (&self.kubernetes, &self.azure_container_apps, &self.ecs) {
            (Some(_), None, None) => "kubernetes",
            (None, Some(_), None) => "azureContainerApps",
            (None, None, Some(_)) => "ecs",
            _ => "invalid",
        }
    }
}

/// A namespace of the local cluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesPlatform {
    /// Namespace the workloads go to. Default: the Environment's own namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
        length(min = 1, max = 63)
    )]
    pub namespace: Option<String>,
}

/// Azure Container Apps. Credentials come from workload identity (OIDC federation), never
/// from a static key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AzureContainerAppsPlatform {
    /// Azure subscription ID (a GUID).
    #[schemars(regex(
        pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    ))]
    pub subscription_id: String,
    /// Resource group the container apps live in.
    #[schemars(length(min = 1, max = 90))]
    pub resource_group: String,
    /// ARM ID of the Container Apps managed environment,
    /// `/subscriptions/.../resourceGroups/.../providers/Microsoft.App/managedEnvironments/NAME`.
    #[schemars(regex(
        pattern = r"(?i)^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.App/managedEnvironments/[^/]+$"
    ))]
    pub managed_environment_id: String,
    /// Azure region, e.g. `uksouth`.
    #[schemars(length(min = 1, max = 64))]
    pub location: String,
    /// Workload identity used to reach Azure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<AzureIdentity>,
    /// ARM endpoint; override for sovereign clouds or tests.
    #[serde(default = "default_arm_endpoint")]
    #[schemars(regex(pattern = r"^https?://"))]
    pub endpoint: String,
}

fn default_arm_endpoint() -> String {
    "https://management.azure.com".into()
}

/// A workload identity (OIDC federation) for Azure.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AzureIdentity {
    /// Client ID of the user-assigned managed identity or app registration.
    #[schemars(length(min = 1, max = 64))]
    pub client_id: String,
    /// Tenant ID; default: the one in the federated token's environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
}

/// AWS ECS (Fargate) in one cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EcsPlatform {
    /// AWS region, e.g. `eu-west-2`.
    #[schemars(regex(pattern = r"^[a-z]{2}(-[a-z]+)+-[0-9]+$"))]
    pub region: String,
    /// ECS cluster name or ARN.
    #[schemars(length(min = 1, max = 255))]
    pub cluster: String,
    /// Subnets the tasks run in (awsvpc networking).
    #[schemars(length(min = 1, max = 16))]
    pub subnets: Vec<String>,
    /// Security groups attached to the tasks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5))]
    pub security_groups: Vec<String>,
    /// IAM role ECS uses to pull images and read secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+$"))]
    pub execution_role_arn: Option<String>,
    /// IAM role the application containers assume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/.+$"))]
    pub task_role_arn: Option<String>,
    /// Endpoint override for tests and emulators, e.g. `http://127.0.0.1:5000`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://"))]
    pub endpoint_url: Option<String>,
}

/// A container registry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Registry {
    /// Registry host, e.g. `cr.example.io`.
    #[schemars(length(min = 1, max = 253))]
    pub server: String,
    /// Secret of type `kubernetes.io/dockerconfigjson` in the Environment's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_secret_name: Option<String>,
}

/// A promotion gate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Promotion {
    /// Environment (same namespace) where a Release of the same app must have Succeeded with
    /// the same version first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"),
        length(min = 1, max = 253)
    )]
    pub from: Option<String>,
    /// A person must approve each version with the `slipway.dev/approved-version` annotation.
    #[serde(default)]
    pub require_approval: bool,
}

/// Defaults for every service of every Release in this Environment.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceDefaults {
    /// Replica bounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<Replicas>,
    /// CPU and memory per replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Environment variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 200))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub env: Vec<EnvVar>,
}

/// A secret exposed as an environment variable.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretEnv {
    /// Name of the environment variable.
    #[schemars(
        regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$"),
        length(min = 1, max = 253)
    )]
    pub name: String,
    /// Where the value comes from: exactly one source.
    pub from: SecretSource,
}

/// Where a secret value comes from. Exactly one block must be set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "(has(self.secretKeyRef) ? 1 : 0) + (has(self.azureKeyVault) ? 1 : 0) + (has(self.awsSecretsManager) ? 1 : 0) == 1",
     "message": "set exactly one of from.secretKeyRef, from.azureKeyVault or from.awsSecretsManager"}
]))]
pub struct SecretSource {
    /// A key of a Kubernetes Secret in the Environment's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
    /// A secret in Azure Key Vault (Azure Container Apps only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure_key_vault: Option<AzureKeyVaultRef>,
    /// A secret in AWS Secrets Manager (ECS only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_secrets_manager: Option<AwsSecretsManagerRef>,
}

impl SecretSource {
    /// The field name of the source that is set, for messages.
    pub fn kind_name(&self) -> &'static str {
        if self.secret_key_ref.is_some() {
            "secretKeyRef"
        } else if self.azure_key_vault.is_some() {
            "azureKeyVault"
        } else {
            "awsSecretsManager"
        }
    }
}

/// A key of a Kubernetes Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A secret in Azure Key Vault.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AzureKeyVaultRef {
    /// Vault URL, e.g. `https://kv-shop.vault.azure.net`.
    #[schemars(regex(pattern = r"^https://"))]
    pub vault_url: String,
    /// Secret name in the vault.
    #[schemars(length(min = 1, max = 127))]
    pub secret_name: String,
}

/// A secret in AWS Secrets Manager.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AwsSecretsManagerRef {
    /// Secret ARN.
    #[schemars(regex(pattern = r"^arn:aws[a-z-]*:secretsmanager:"))]
    pub arn: String,
    /// A JSON key inside the secret; default: the whole secret string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Observed state of an Environment.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentStatus {
    /// The `metadata.generation` last reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Which platform block is set (printed by `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// Ready, Reconciling and Stalled conditions.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Releases that target this Environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub releases: Vec<EnvironmentRelease>,
}

/// One Release targeting an Environment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentRelease {
    /// Release name.
    pub name: String,
    /// The Release's app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// Version serving now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The Release's phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
}
