//! Slipway: a Kubernetes operator that rolls out containerised apps to dev, staging and prod.
//!
//! - [`api`]: the `slipway.dev/v1alpha1` custom resources (Environment, Release, ScaledWorker).
//! - [`controller`]: one reconciler per kind, started together by [`controller::run`].
//! - [`admin`]: the `/live`, `/ready` and `/metrics` server.
//! - [`telemetry`]: logging setup.

/// The field manager of every write Slipway makes (server-side apply and status).
pub const FIELD_MANAGER: &str = "slipway";

pub mod admin;
pub mod api;
pub mod controller;
pub mod leader;
pub mod metrics;
pub mod platform;
pub mod release;
pub mod scaling;
pub mod telemetry;
