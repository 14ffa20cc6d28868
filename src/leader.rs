//! Leader election through a `coordination.k8s.io/v1` Lease, so that of several replicas only
//! one reconciles and writes.
//!
//! The holder renews the Lease every `renew` interval; a candidate takes it over once
//! `renewTime + leaseDurationSeconds` has passed. Every write to the Lease is a replace that
//! carries the resourceVersion it read, so two candidates can never both win. A holder that
//! fails to renew before its own lease would expire reports the loss at once; the caller stops
//! the process, so a replica that lost the Lease never writes again.

use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

/// Settings of one candidate.
#[derive(Clone, Debug)]
pub struct LeaderConfig {
    pub namespace: String,
    pub lease_name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_every: Duration,
}

/// What the holder of a Lease looks like right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// We hold it (or just took it).
    Held,
    /// Someone else holds a lease that has not expired.
    HeldBy(String),
}

/// Decides whether `me` may take or keep the lease. Pure.
pub fn may_hold(spec: Option<&LeaseSpec>, me: &str, now: chrono::DateTime<Utc>) -> bool {
    let Some(spec) = spec else { return true };
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder.is_empty() || holder == me {
        return true;
    }
    let duration = spec.lease_duration_seconds.unwrap_or(15) as i64;
    match spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) {
        Some(t) => now.timestamp_micros() > t.0.as_microsecond() + duration * 1_000_000,
        None => true,
    }
}

fn micro_now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// One acquire-or-renew attempt.
pub async fn try_acquire(client: &Client, cfg: &LeaderConfig) -> Result<Verdict, kube::Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
    let now = Utc::now();
    match api.get_opt(&cfg.lease_name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.lease_name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(cfg.identity.clone()),
                    lease_duration_seconds: Some(cfg.lease_duration.as_secs() as i32),
                    acquire_time: Some(micro_now()),
                    renew_time: Some(micro_now()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Verdict::Held),
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    Ok(Verdict::HeldBy("(just created by another)".into()))
                }
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            if !may_hold(lease.spec.as_ref(), &cfg.identity, now) {
                let holder = lease
                    .spec
                    .and_then(|s| s.holder_identity)
                    .unwrap_or_default();
                return Ok(Verdict::HeldBy(holder));
            }
            let mut spec = lease.spec.clone().unwrap_or_default();
            if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
                spec.holder_identity = Some(cfg.identity.clone());
                spec.acquire_time = Some(micro_now());
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
            spec.lease_duration_seconds = Some(cfg.lease_duration.as_secs() as i32);
            spec.renew_time = Some(micro_now());
            lease.spec = Some(spec);
            // The resourceVersion read above makes this replace fail if anyone wrote meanwhile.
            match api
                .replace(&cfg.lease_name, &PostParams::default(), &lease)
                .await
            {
                Ok(_) => Ok(Verdict::Held),
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    Ok(Verdict::HeldBy("(conflict)".into()))
                }
                Err(e) => Err(e),
            }
        }
    }
}

/// Waits until this candidate holds the Lease.
pub async fn acquire(client: &Client, cfg: &LeaderConfig) {
    let mut last_holder = String::new();
    loop {
        match try_acquire(client, cfg).await {
            Ok(Verdict::Held) => {
                tracing::info!(lease = %cfg.lease_name, identity = %cfg.identity, "acquired the leader Lease");
                return;
            }
            Ok(Verdict::HeldBy(h)) => {
                if h != last_holder {
                    tracing::info!(lease = %cfg.lease_name, holder = %h, "waiting for the leader Lease");
                    last_holder = h;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "leader election: could not read or write the Lease")
            }
        }
        tokio::time::sleep(cfg.renew_every).await;
    }
}

/// Renews the Lease until renewal fails for longer than the lease lasts, then returns: from
/// that moment another replica may hold it.
pub async fn hold(client: &Client, cfg: &LeaderConfig) -> String {
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(cfg.renew_every).await;
        match try_acquire(client, cfg).await {
            Ok(Verdict::Held) => last_ok = tokio::time::Instant::now(),
            Ok(Verdict::HeldBy(h)) => return format!("the Lease is now held by {h}"),
            Err(e) => {
                // Stop before the lease can have expired for the others.
                if last_ok.elapsed() + cfg.renew_every >= cfg.lease_duration {
                    return format!("could not renew the Lease in time: {e}");
                }
                tracing::warn!(error = %e, "leader election: renewal failed; retrying");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed_secs_ago: i64, duration: i32) -> LeaseSpec {
        let t =
            k8s_openapi::jiff::Timestamp::from_second(Utc::now().timestamp() - renewed_secs_ago)
                .unwrap();
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(duration),
            renew_time: Some(MicroTime(t)),
            ..Default::default()
        }
    }

    #[test]
    fn who_may_hold_the_lease() {
        let now = Utc::now();
        assert!(may_hold(None, "a", now), "no lease yet");
        assert!(
            may_hold(Some(&spec("a", 100, 15)), "a", now),
            "our own lease, even if late"
        );
        assert!(
            !may_hold(Some(&spec("b", 5, 15)), "a", now),
            "another holder's live lease"
        );
        assert!(
            may_hold(Some(&spec("b", 16, 15)), "a", now),
            "another holder's expired lease"
        );
        assert!(may_hold(Some(&spec("", 1, 15)), "a", now), "released lease");
    }
}
