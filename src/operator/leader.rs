//! Leader election through a coordination.k8s.io/v1 Lease: one replica holds it and runs the reconcilers,
//! renewing it every couple of seconds; another takes over once it has not been renewed for its duration.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub const LEASE_NAME: &str = "tandem-operator";
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
pub const RENEW_EVERY: Duration = Duration::from_secs(2);
/// A leader that could not renew for this long steps down before anyone can take over.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);

/// One candidate's view of the Lease.
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

impl LeaseLock {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str, duration: Duration) -> Self {
        LeaseLock {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            duration,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// One election round: creates the Lease when absent, renews it when held by us, takes it over when its holder
    /// let it expire. `Ok(true)` when we hold it afterwards. A write that loses a race (conflict) is `Ok(false)`.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let Some(current) = self.api.get_opt(&self.name).await? else {
            let lease = self.lease(None, now, None, 0);
            return settle(self.api.create(&PostParams::default(), &lease).await);
        };
        let spec = current.spec.unwrap_or_default();
        let holder = spec.holder_identity.as_deref().unwrap_or_default();
        let mine = holder == self.identity;
        if !mine && !holder.is_empty() && !expired(&spec, now, self.duration) {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let acquired = if mine { spec.acquire_time } else { None };
        let lease = self.lease(current.metadata.resource_version, now, acquired, transitions);
        settle(self.api.replace(&self.name, &PostParams::default(), &lease).await)
    }

    /// Gives the Lease up (holder cleared, duration 1 s) so that another replica takes over at once.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut current) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let spec = current.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        current.metadata.managed_fields = None;
        settle(self.api.replace(&self.name, &PostParams::default(), &current).await).map(drop)
    }

    fn lease(
        &self,
        resource_version: Option<String>,
        now: Timestamp,
        acquired: Option<MicroTime>,
        transitions: i32,
    ) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                resource_version,
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(self.duration.as_secs() as i32),
                acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(transitions),
                ..Default::default()
            }),
        }
    }
}

fn settle(result: Result<Lease, kube::Error>) -> Result<bool, kube::Error> {
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.is_conflict() || s.is_already_exists() => Ok(false),
        Err(e) => Err(e),
    }
}

/// True when the holder has not renewed within the Lease's duration (its own, else `default`).
fn expired(spec: &LeaseSpec, now: Timestamp, default: Duration) -> bool {
    let secs = spec.lease_duration_seconds.map_or(default.as_secs() as i64, i64::from);
    match spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) {
        None => true,
        Some(t) => t.0 + SignedDuration::from_secs(secs) < now,
    }
}

/// Campaigns until `shutdown`: `leading` is true while this replica holds the Lease. On shutdown a held Lease is
/// released.
pub async fn campaign(lock: LeaseLock, leading: watch::Sender<bool>, shutdown: CancellationToken) {
    let mut last_renewed: Option<Instant> = None;
    loop {
        match lock.try_acquire_or_renew().await {
            Ok(true) => {
                last_renewed = Some(Instant::now());
                if !leading.send_replace(true) {
                    tracing::info!(identity = lock.identity(), "became the leader; starting reconcilers");
                }
            }
            Ok(false) => {
                last_renewed = None;
                if leading.send_replace(false) {
                    tracing::warn!(identity = lock.identity(), "lost the lease to another replica");
                }
            }
            Err(e) => {
                tracing::warn!("leader election: reading or writing Lease {} failed: {e}", lock.name);
                if last_renewed.is_some_and(|t| t.elapsed() > RENEW_DEADLINE) {
                    last_renewed = None;
                    leading.send_replace(false);
                    tracing::warn!("could not renew the lease for {RENEW_DEADLINE:?}; stepping down");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RENEW_EVERY) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    if *leading.borrow() {
        leading.send_replace(false);
        if let Err(e) = lock.release().await {
            tracing::warn!("releasing Lease {} failed: {e}", lock.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed_secs_ago: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(
                Timestamp::now() - SignedDuration::from_secs(renewed_secs_ago),
            )),
            ..Default::default()
        }
    }

    #[test]
    fn a_lease_expires_after_its_duration_without_renewal() {
        let now = Timestamp::now();
        assert!(!expired(&spec("a", 5), now, LEASE_DURATION));
        assert!(expired(&spec("a", 16), now, LEASE_DURATION));
        assert!(expired(&LeaseSpec::default(), now, LEASE_DURATION));
    }
}

#[cfg(test)]
mod scenarios {
    use super::*;
    use crate::operator::fixtures::{Scenario, finished, mock_client};

    fn lease(holder: &str, renewed_secs_ago: i64, transitions: i32) -> Lease {
        let renewed = Timestamp::now() - SignedDuration::from_secs(renewed_secs_ago);
        Lease {
            metadata: ObjectMeta {
                name: Some(LEASE_NAME.into()),
                namespace: Some("ops".into()),
                resource_version: Some("41".into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                lease_duration_seconds: Some(15),
                acquire_time: Some(MicroTime(renewed - SignedDuration::from_secs(600))),
                renew_time: Some(MicroTime(renewed)),
                lease_transitions: Some(transitions),
                ..Default::default()
            }),
        }
    }

    async fn round(scenario: Scenario) -> bool {
        let (client, server) = mock_client();
        let mocksrv = server.run(scenario);
        let lock = LeaseLock::new(client, "ops", LEASE_NAME, "op-a", LEASE_DURATION);
        let leading = lock.try_acquire_or_renew().await.unwrap();
        drop(lock);
        finished(mocksrv).await;
        leading
    }

    #[tokio::test]
    async fn an_absent_lease_is_created_and_held() {
        assert!(round(Scenario::LeaseCreated { identity: "op-a" }).await);
    }

    #[tokio::test]
    async fn the_holder_renews_keeping_its_acquire_time() {
        let scenario = Scenario::LeaseReplaced {
            current: lease("op-a", 2, 4),
            identity: "op-a",
            transitions: 4,
            keeps_acquire_time: true,
        };
        assert!(round(scenario).await);
    }

    #[tokio::test]
    async fn an_expired_lease_is_taken_over() {
        let scenario = Scenario::LeaseReplaced {
            current: lease("op-b", 60, 4),
            identity: "op-a",
            transitions: 5,
            keeps_acquire_time: false,
        };
        assert!(round(scenario).await);
    }

    #[tokio::test]
    async fn a_lease_renewed_by_another_replica_is_left_alone() {
        assert!(
            !round(Scenario::LeaseLeftAlone {
                current: lease("op-b", 3, 4)
            })
            .await
        );
    }
}
