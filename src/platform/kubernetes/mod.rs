//! The Kubernetes platform: a [`RevisionPlan`](crate::release::plan::RevisionPlan) becomes
//! Deployments, Services, Ingresses, HorizontalPodAutoscalers, CronJobs and a migration Job in
//! the Release's namespace, each owned by the Release.
//!
//! - [`render`]: pure functions from a plan to k8s-openapi objects (no I/O).

pub mod ops;
pub mod render;
