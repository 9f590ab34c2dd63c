//! Tunnel health of an operator port, from what its agents reported and
//! when (pure: the clock is an argument).
//!
//! The rule (issue 14): Ready is True only while at least one agent has
//! reported the tunnel Up within the TTL (config `agents.ttlSeconds`, default
//! 30 s; agents report every 10 s); False when every fresh report says
//! Down or Refused, with the agents' errors in the message; Unknown when no
//! agent has reported within the TTL. A finding (a clash) still wins over
//! all of this.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::crd::AgentStatus;

/// Messages are cut here: they become a condition message and an Event.
const MAX_MESSAGE: usize = 1024;

/// The Ready condition an operator port's tunnel health calls for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// "True", "False" or "Unknown".
    pub status: &'static str,
    /// TunnelUp, TunnelDown or NoAgentReport.
    pub reason: &'static str,
    pub message: String,
}

/// Whether `agent` reported within `ttl` of `now` (a clock ahead of ours
/// counts as fresh).
pub fn is_fresh(agent: &AgentStatus, now: Timestamp, ttl: Duration) -> bool {
    let Some(seen) = agent.last_seen.as_ref() else {
        return false;
    };
    let age = now.as_millisecond() - seen.0.as_millisecond();
    age < i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

/// Apply the rule to one port's agent entries.
pub fn tunnel_health(agents: &[AgentStatus], now: Timestamp, ttl: Duration) -> Health {
    let fresh: Vec<&AgentStatus> = agents.iter().filter(|a| is_fresh(a, now, ttl)).collect();
    let up: Vec<&&AgentStatus> = fresh.iter().filter(|a| a.tunnel == "Up").collect();
    let message = if !up.is_empty() {
        let hosts: Vec<String> = up
            .iter()
            .map(|a| format!("{} ({} connections)", a.name, a.active_connections))
            .collect();
        return Health {
            status: "True",
            reason: "TunnelUp",
            message: cut(format!("tunnel up on {}", hosts.join(", "))),
        };
    } else if !fresh.is_empty() {
        let states: Vec<String> = fresh
            .iter()
            .map(|a| match &a.last_error {
                Some(e) => format!("{}: {} ({e})", a.name, a.tunnel),
                None => format!("{}: {}", a.name, a.tunnel),
            })
            .collect();
        return Health {
            status: "False",
            reason: "TunnelDown",
            message: cut(format!("no agent has the tunnel up: {}", states.join("; "))),
        };
    } else {
        let mut m = format!("no agent reported within {}s", ttl.as_secs());
        let last = agents
            .iter()
            .filter_map(|a| Some((a.last_seen.as_ref()?.0, &a.name)))
            .max();
        if let Some((at, name)) = last {
            m.push_str(&format!(" (last: {name} at {at})"));
        }
        m
    };
    Health {
        status: "Unknown",
        reason: "NoAgentReport",
        message: cut(message),
    }
}

/// The earliest moment after `now` at which an entry goes stale (the rule's
/// answer may change then), if any.
pub fn next_change(agents: &[AgentStatus], now: Timestamp, ttl: Duration) -> Option<Timestamp> {
    let ttl_ms = i64::try_from(ttl.as_millis()).ok()?;
    agents
        .iter()
        .filter_map(|a| {
            let expires = a
                .last_seen
                .as_ref()?
                .0
                .as_millisecond()
                .checked_add(ttl_ms)?;
            (expires > now.as_millisecond()).then_some(expires)
        })
        .min()
        .and_then(|ms| Timestamp::from_millisecond(ms).ok())
}

fn cut(mut s: String) -> String {
    if s.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    const TTL: Duration = Duration::from_secs(30);

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn agent(name: &str, tunnel: &str, seen: Option<i64>, error: Option<&str>) -> AgentStatus {
        AgentStatus {
            name: name.into(),
            tunnel: tunnel.into(),
            active_connections: 2,
            last_error: error.map(String::from),
            version: Some("0.1.0".into()),
            last_seen: seen.map(|s| Time(t(s))),
        }
    }

    #[test]
    fn no_entries_is_unknown() {
        let h = tunnel_health(&[], t(1000), TTL);
        assert_eq!((h.status, h.reason), ("Unknown", "NoAgentReport"));
        assert!(h.message.contains("within 30s"), "{}", h.message);
    }

    #[test]
    fn one_fresh_up_is_enough() {
        let agents = [
            agent("a", "Down", Some(995), Some("ssh: connection refused")),
            agent("b", "Up", Some(990), None),
        ];
        let h = tunnel_health(&agents, t(1000), TTL);
        assert_eq!((h.status, h.reason), ("True", "TunnelUp"));
        assert!(h.message.contains("b (2 connections)"), "{}", h.message);
    }

    #[test]
    fn stale_up_does_not_count() {
        // b said Up 31 s ago; a's fresh report says Down.
        let agents = [
            agent("a", "Down", Some(995), Some("ssh: connection refused")),
            agent("b", "Up", Some(969), None),
        ];
        let h = tunnel_health(&agents, t(1000), TTL);
        assert_eq!((h.status, h.reason), ("False", "TunnelDown"));
        assert!(
            h.message.contains("a: Down (ssh: connection refused)") && !h.message.contains("b:"),
            "{}",
            h.message
        );
    }

    #[test]
    fn refused_counts_as_down_with_its_reason() {
        let agents = [agent("a", "Refused", Some(999), Some("runtime port"))];
        let h = tunnel_health(&agents, t(1000), TTL);
        assert_eq!(h.status, "False");
        assert!(h.message.contains("a: Refused (runtime port)"));
    }

    #[test]
    fn all_stale_is_unknown_naming_the_last_report() {
        let agents = [
            agent("a", "Up", Some(900), None),
            agent("b", "Up", None, None),
        ];
        let h = tunnel_health(&agents, t(1000), TTL);
        assert_eq!((h.status, h.reason), ("Unknown", "NoAgentReport"));
        assert!(h.message.contains("last: a at"), "{}", h.message);
    }

    #[test]
    fn ttl_boundary_is_exclusive() {
        let agents = [agent("a", "Up", Some(970), None)];
        assert_eq!(tunnel_health(&agents, t(999), TTL).status, "True");
        assert_eq!(tunnel_health(&agents, t(1000), TTL).status, "Unknown");
    }

    #[test]
    fn next_change_is_the_earliest_expiry() {
        let agents = [
            agent("a", "Up", Some(990), None),
            agent("b", "Up", Some(980), None),
            agent("c", "Up", Some(900), None),
        ];
        assert_eq!(next_change(&agents, t(1000), TTL), Some(t(1010)));
        assert_eq!(next_change(&agents[2..], t(1000), TTL), None);
    }

    #[test]
    fn long_messages_are_cut() {
        let long = "x".repeat(5000);
        let agents = [agent("a", "Down", Some(999), Some(&long))];
        let h = tunnel_health(&agents, t(1000), TTL);
        assert!(h.message.len() <= MAX_MESSAGE + 3);
    }
}
