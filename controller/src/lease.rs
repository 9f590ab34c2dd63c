//! Leader election through a `coordination.k8s.io/v1` Lease, so two replicas
//! never fight: only the holder writes. kube-runtime has none; this is the
//! client-go algorithm reduced to what one controller needs (optimistic
//! concurrency on the Lease's resourceVersion, takeover after expiry, release
//! on shutdown).

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use tokio::sync::watch;

/// One replica's side of the election.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    renew_every: Duration,
}

/// What the Lease says about who leads.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    /// We hold it (renew), or may take it (free or expired).
    Take { transition: bool },
    /// Someone else holds an unexpired lease.
    Wait,
}

/// Pure: may `identity` take or renew `spec` at `now`?
fn decide(spec: &LeaseSpec, identity: &str, now: Timestamp) -> Decision {
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder == identity {
        return Decision::Take { transition: false };
    }
    if holder.is_empty() {
        return Decision::Take { transition: true };
    }
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
    let expired = match &spec.renew_time {
        Some(MicroTime(renewed)) => *renewed + duration < now,
        None => true,
    };
    if expired {
        Decision::Take { transition: true }
    } else {
        Decision::Wait
    }
}

impl LeaderElector {
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
        renew_every: Duration,
    ) -> Self {
        LeaderElector {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            duration,
            renew_every,
        }
    }

    /// Campaign and renew until `shutdown` turns true; publishes leadership
    /// on `leader`. Releases the lease on the way out when holding it.
    pub async fn run(self, leader: watch::Sender<bool>, mut shutdown: watch::Receiver<bool>) {
        let mut last_renewed: Option<Instant> = None;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewed = Some(Instant::now()),
                Ok(false) => last_renewed = None,
                Err(e) => tracing::warn!(lease = %self.name, error = %e, "cannot renew the lease"),
            }
            // Step down before the lease can expire for the others: a leader
            // that cannot renew stops writing one renew period early.
            let leading =
                last_renewed.is_some_and(|t| t.elapsed() + self.renew_every < self.duration);
            leader.send_if_modified(|was| {
                if *was != leading {
                    tracing::info!(lease = %self.name, identity = %self.identity, leading, "leadership changed");
                    *was = leading;
                    true
                } else {
                    false
                }
            });
            tokio::select! {
                _ = tokio::time::sleep(self.renew_every) => {}
                _ = shutdown.wait_for(|s| *s) => break,
            }
        }
        if *leader.borrow() {
            leader.send_replace(false);
            if let Err(e) = self.release().await {
                tracing::warn!(lease = %self.name, error = %e, "cannot release the lease");
            } else {
                tracing::info!(lease = %self.name, "lease released");
            }
        }
    }

    async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let duration = i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return conflict_is_false(self.api.create(&PostParams::default(), &lease).await);
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        match decide(spec, &self.identity, now) {
            Decision::Wait => Ok(false),
            Decision::Take { transition } => {
                if transition {
                    spec.holder_identity = Some(self.identity.clone());
                    spec.acquire_time = Some(MicroTime(now));
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                }
                spec.lease_duration_seconds = Some(duration);
                spec.renew_time = Some(MicroTime(now));
                // replace carries the resourceVersion we read: a concurrent
                // writer makes this fail with 409 instead of both winning.
                conflict_is_false(
                    self.api
                        .replace(&self.name, &PostParams::default(), &lease)
                        .await,
                )
            }
        }
    }

    async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await?;
        Ok(())
    }
}

fn conflict_is_false(result: Result<Lease, kube::Error>) -> Result<bool, kube::Error> {
    match result {
        Ok(_) => Ok(true),
        Err(e) if is_conflict(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 409)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, renewed: i64, duration: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(String::from),
            renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
            lease_duration_seconds: Some(duration),
            ..Default::default()
        }
    }

    #[test]
    fn holder_renews_others_wait_until_expiry() {
        let now = Timestamp::from_second(110).unwrap();
        let s = spec(Some("a"), 100, 15);
        assert_eq!(decide(&s, "a", now), Decision::Take { transition: false });
        assert_eq!(decide(&s, "b", now), Decision::Wait);
        let later = Timestamp::from_second(116).unwrap();
        assert_eq!(decide(&s, "b", later), Decision::Take { transition: true });
    }

    #[test]
    fn released_lease_is_free() {
        let now = Timestamp::from_second(100).unwrap();
        assert_eq!(
            decide(&spec(None, 100, 1), "b", now),
            Decision::Take { transition: true }
        );
    }
}
