//! Prometheus metrics, rendered in the text exposition format by hand (a few
//! counters do not need a metrics framework).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters and gauges of one controller process.
#[derive(Debug, Default)]
pub struct Metrics {
    pub reconciles: AtomicU64,
    pub reconcile_errors: AtomicU64,
    pub applies: AtomicU64,
    pub status_writes: AtomicU64,
    pub deletes: AtomicU64,
    pub events: AtomicU64,
    pub inventory_size: AtomicU64,
    pub is_leader: AtomicU64,
    pub watch_errors: AtomicU64,
    pub last_reconcile_micros: AtomicU64,
    /// TokenReviews sent to the API server (cache misses of agent tokens).
    pub token_reviews: AtomicU64,
    /// TokenReviews that failed to get an answer.
    pub token_review_errors: AtomicU64,
    /// gRPC calls refused: no/bad token, or a name the token may not use.
    pub agent_unauthenticated: AtomicU64,
    pub agent_permission_denied: AtomicU64,
    /// Agent reports recorded (authenticated, by the leader).
    pub agent_reports: AtomicU64,
}

impl Metrics {
    /// Every write to the API server for OperatorPorts (spec, status, delete).
    pub fn writes(&self) -> u64 {
        self.applies.load(Ordering::Relaxed)
            + self.status_writes.load(Ordering::Relaxed)
            + self.deletes.load(Ordering::Relaxed)
    }

    pub fn render(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        metric(
            "portplane_reconciles_total",
            "counter",
            "Reconciles of the desired inventory against the cluster.",
            &[("", get(&self.reconciles))],
        );
        metric(
            "portplane_reconcile_errors_total",
            "counter",
            "Reconciles that failed (retried).",
            &[("", get(&self.reconcile_errors))],
        );
        metric(
            "portplane_writes_total",
            "counter",
            "OperatorPort writes by kind.",
            &[
                ("{kind=\"apply\"}", get(&self.applies)),
                ("{kind=\"status\"}", get(&self.status_writes)),
                ("{kind=\"delete\"}", get(&self.deletes)),
            ],
        );
        metric(
            "portplane_events_total",
            "counter",
            "Kubernetes Events published on Services.",
            &[("", get(&self.events))],
        );
        metric(
            "portplane_watch_errors_total",
            "counter",
            "Watch errors (each is retried with backoff).",
            &[("", get(&self.watch_errors))],
        );
        metric(
            "portplane_inventory_size",
            "gauge",
            "OperatorPorts in the desired inventory.",
            &[("", get(&self.inventory_size))],
        );
        metric(
            "portplane_leader",
            "gauge",
            "1 while this replica holds the lease.",
            &[("", get(&self.is_leader))],
        );
        metric(
            "portplane_tokenreviews_total",
            "counter",
            "TokenReviews sent for agent tokens (cache misses), answered or not.",
            &[("", get(&self.token_reviews))],
        );
        metric(
            "portplane_tokenreview_errors_total",
            "counter",
            "TokenReviews that got no answer (the call was refused UNAVAILABLE).",
            &[("", get(&self.token_review_errors))],
        );
        metric(
            "portplane_agent_reports_total",
            "counter",
            "Agent reports recorded (authenticated, by the leader).",
            &[("", get(&self.agent_reports))],
        );
        metric(
            "portplane_agent_calls_refused_total",
            "counter",
            "Agent gRPC calls refused, by gRPC code.",
            &[
                (
                    "{code=\"unauthenticated\"}",
                    get(&self.agent_unauthenticated),
                ),
                (
                    "{code=\"permission_denied\"}",
                    get(&self.agent_permission_denied),
                ),
            ],
        );
        metric(
            "portplane_last_reconcile_seconds",
            "gauge",
            "Duration of the last reconcile.",
            &[],
        );
        let _ = writeln!(
            out,
            "portplane_last_reconcile_seconds {:.6}",
            get(&self.last_reconcile_micros) as f64 / 1e6
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_help_and_type() {
        let m = Metrics::default();
        m.applies.fetch_add(3, Ordering::Relaxed);
        m.deletes.fetch_add(1, Ordering::Relaxed);
        let text = m.render();
        assert!(text.contains("# TYPE portplane_writes_total counter"));
        assert!(text.contains("portplane_writes_total{kind=\"apply\"} 3"));
        assert_eq!(m.writes(), 4);
    }
}
