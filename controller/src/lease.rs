//! Leader election through a `coordination.k8s.io/v1` Lease, so two replicas
//! never write at once: only the holder writes. kube-runtime has none; this
//! is client-go's algorithm (`tools/leaderelection`) reduced to what one
//! controller needs:
//!
//! - Time is only ever compared on this replica's monotonic clock. Another
//!   holder's lease counts as expired once its record (holder, renewTime,
//!   resourceVersion) has not changed for `leaseDurationSeconds` *as we
//!   observed it*, never by comparing its `renewTime` to our wall clock
//!   (clocks of two machines disagree).
//! - A leader holds the lease only until `renew_deadline` after the start of
//!   its last successful renew. Every renew is cut off at that deadline, so a
//!   hung API call cannot stretch it; leadership is published as that
//!   instant ([`Leadership`]), and writers stop at it on their own
//!   (`tokio::time::timeout_at`), whether or not this task gets to run.
//!   Since the others wait `lease_duration` from when *they* saw our last
//!   renew, which is after we started it, `renew_deadline < lease_duration`
//!   means we stop writing before anyone else may start.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;

/// Until when this replica may write: `Some(deadline)` while it holds the
/// lease, `None` otherwise. Self-expiring: a reader compares the deadline
/// with `Instant::now()` and needs no further message to stop.
pub type Leadership = Option<Instant>;

/// Whether `leadership` allows writing at `now`.
pub fn is_leading(leadership: &Leadership, now: Instant) -> bool {
    leadership.is_some_and(|until| now < until)
}

/// Timing of the election, as in client-go (defaults there: 15 s, 10 s, 2 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long others wait, from the last change they observed, before
    /// taking a lease whose holder stopped renewing.
    pub lease_duration: Duration,
    /// How long a leader keeps writing after the start of its last
    /// successful renew; must be below `lease_duration`.
    pub renew_deadline: Duration,
    /// How often the leader renews and a standby retries.
    pub retry_period: Duration,
}

/// One replica's side of the election.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
}

/// What identifies one write of the lease record, to notice that it changed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    holder: String,
    renew_time: Option<Timestamp>,
    resource_version: Option<String>,
}

/// The record as last seen, and when (our clock) it was first seen so.
#[derive(Debug, Clone)]
struct Observed {
    record: Record,
    since: Instant,
}

/// What the Lease says about who leads.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    /// We hold it (renew), or may take it (free, or not renewed for a lease
    /// duration of our observation).
    Take { transition: bool },
    /// Someone else holds a lease we have seen renewed recently.
    Wait,
}

/// Pure: may `identity` take or renew the lease `spec`, which has been
/// unchanged since `observed_since` (our clock), at `now`?
fn decide(spec: &LeaseSpec, identity: &str, observed_since: Instant, now: Instant) -> Decision {
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder == identity {
        return Decision::Take { transition: false };
    }
    if holder.is_empty() {
        return Decision::Take { transition: true };
    }
    let duration =
        Duration::from_secs(u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0));
    if observed_since + duration <= now {
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
        timing: Timing,
    ) -> Self {
        LeaderElector {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            timing,
        }
    }

    /// Campaign and renew until `shutdown` turns true; publishes
    /// [`Leadership`] on `leader`. Releases the lease on the way out when
    /// holding it.
    pub async fn run(self, leader: watch::Sender<Leadership>, mut shutdown: watch::Receiver<bool>) {
        let mut observed: Option<Observed> = None;
        loop {
            let started = Instant::now();
            let held_until = (*leader.borrow()).filter(|until| started < *until);
            // A leader's attempt may last until its lease runs out; a
            // standby's is bounded the same way so it cannot hang forever.
            let attempt_deadline = held_until.unwrap_or(started + self.timing.renew_deadline);
            let attempt =
                tokio::time::timeout_at(attempt_deadline, self.try_acquire_or_renew(&mut observed));
            let leadership = match attempt.await {
                Ok(Ok(true)) => Some(started + self.timing.renew_deadline),
                Ok(Ok(false)) => None,
                Ok(Err(e)) => {
                    tracing::warn!(lease = %self.name, error = %e, "cannot renew the lease");
                    held_until
                }
                Err(_) => {
                    tracing::warn!(lease = %self.name, timeout = ?(attempt_deadline - started), "lease request timed out");
                    held_until.filter(|until| Instant::now() < *until)
                }
            };
            publish(&leader, leadership, &self.name, &self.identity);
            // Wake at the retry period, or when the lease runs out, whichever
            // comes first, so a leader that cannot renew steps down on time.
            let mut wake = Instant::now() + self.timing.retry_period;
            if let Some(until) = leadership {
                wake = wake.min(until);
            }
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = shutdown.wait_for(|s| *s) => break,
            }
            if leadership.is_some_and(|until| Instant::now() >= until) {
                publish(&leader, None, &self.name, &self.identity);
            }
        }
        let was_leading = is_leading(&leader.borrow(), Instant::now());
        leader.send_replace(None);
        if was_leading {
            let release = tokio::time::timeout(self.timing.renew_deadline, self.release());
            match release.await {
                Ok(Ok(())) => tracing::info!(lease = %self.name, "lease released"),
                Ok(Err(e)) => {
                    tracing::warn!(lease = %self.name, error = %e, "cannot release the lease")
                }
                Err(_) => tracing::warn!(lease = %self.name, "releasing the lease timed out"),
            }
        }
    }

    async fn try_acquire_or_renew(
        &self,
        observed: &mut Option<Observed>,
    ) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let duration = i32::try_from(self.timing.lease_duration.as_secs()).unwrap_or(i32::MAX);
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
        let record = Record {
            holder: spec.holder_identity.clone().unwrap_or_default(),
            renew_time: spec.renew_time.as_ref().map(|t| t.0),
            resource_version: lease.metadata.resource_version.clone(),
        };
        let observed_now = match observed.take() {
            Some(seen) if seen.record == record => seen,
            _ => Observed {
                record,
                since: Instant::now(),
            },
        };
        let since = observed_now.since;
        *observed = Some(observed_now);
        match decide(spec, &self.identity, since, Instant::now()) {
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

fn publish(
    leader: &watch::Sender<Leadership>,
    leadership: Leadership,
    lease: &str,
    identity: &str,
) {
    leader.send_if_modified(|was| {
        let changed = was.is_some() != leadership.is_some();
        if changed {
            tracing::info!(
                lease,
                identity,
                leading = leadership.is_some(),
                "leadership changed"
            );
        }
        // A renewed deadline is stored for the next reader without waking
        // anyone: only a change of leader is worth a reconcile.
        *was = leadership;
        changed
    });
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
    fn holder_renews_others_wait_a_lease_duration_of_their_own_observation() {
        let seen = Instant::now();
        let s = spec(Some("a"), 100, 15);
        assert_eq!(
            decide(&s, "a", seen, seen),
            Decision::Take { transition: false }
        );
        assert_eq!(
            decide(&s, "b", seen, seen + Duration::from_secs(14)),
            Decision::Wait
        );
        assert_eq!(
            decide(&s, "b", seen, seen + Duration::from_secs(15)),
            Decision::Take { transition: true }
        );
    }

    #[test]
    fn a_renew_time_far_in_the_past_does_not_expire_the_lease_by_itself() {
        // Another machine's clock may be hours behind ours: its renewTime is
        // not evidence. Only our own observation of no change counts.
        let seen = Instant::now();
        let s = spec(Some("a"), 0, 15);
        assert_eq!(decide(&s, "b", seen, seen), Decision::Wait);
    }

    #[test]
    fn released_lease_is_free() {
        let now = Instant::now();
        assert_eq!(
            decide(&spec(None, 100, 1), "b", now, now),
            Decision::Take { transition: true }
        );
    }

    #[test]
    fn leadership_expires_by_itself() {
        let now = Instant::now();
        let held = Some(now + Duration::from_secs(10));
        assert!(is_leading(&held, now));
        assert!(!is_leading(&held, now + Duration::from_secs(10)));
        assert!(!is_leading(&None, now));
    }
}
