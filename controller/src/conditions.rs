//! Status conditions in the standard metav1.Condition shape, merged by type:
//! `lastTransitionTime` only moves when a condition's status changes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::crd::{AgentStatus, OperatorPortStatus};
use crate::inventory::Finding;
use crate::inventory::health::Health;

/// A condition without its transition time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedCondition {
    pub type_: String,
    pub status: &'static str,
    pub reason: String,
    pub message: String,
}

/// Ready plus one condition per finding kind (first finding's message wins;
/// more of the same kind are appended).
pub fn wanted_conditions(findings: &[Finding]) -> Vec<WantedCondition> {
    let mut by_type: Vec<WantedCondition> = Vec::new();
    for f in findings {
        let type_ = f.kind.condition_type();
        if let Some(c) = by_type.iter_mut().find(|c| c.type_ == type_) {
            if !c.message.contains(&f.message) {
                c.message = format!("{}; {}", c.message, f.message);
            }
        } else {
            by_type.push(WantedCondition {
                type_: type_.into(),
                status: "True",
                reason: type_.into(),
                message: f.message.clone(),
            });
        }
    }
    let ready = match by_type.first() {
        None => WantedCondition {
            type_: "Ready".into(),
            status: "True",
            reason: "Published".into(),
            message: "the port is in the inventory and no problem was found".into(),
        },
        Some(first) => WantedCondition {
            type_: "Ready".into(),
            status: "False",
            reason: first.reason.clone(),
            message: first.message.clone(),
        },
    };
    let mut all = vec![ready];
    all.extend(by_type);
    // Messages of many findings are joined: keep the condition bounded.
    for c in &mut all {
        if c.message.len() > crate::bounds::MAX_MESSAGE {
            c.message = crate::bounds::truncate(&c.message, crate::bounds::MAX_MESSAGE);
        }
    }
    all
}

/// [`wanted_conditions`], with an operator port's tunnel health deciding
/// Ready when no finding does (a finding, such as a clash, still wins).
pub fn wanted_with_health(findings: &[Finding], health: Option<&Health>) -> Vec<WantedCondition> {
    let mut wanted = wanted_conditions(findings);
    if let (true, Some(h), Some(ready)) = (findings.is_empty(), health, wanted.first_mut()) {
        ready.status = h.status;
        ready.reason = h.reason.into();
        ready.message = h.message.clone();
    }
    wanted
}

/// The status to write: wanted conditions merged with the existing ones.
/// Returns the same value as `existing` (so no write) when nothing changed.
pub fn merged_status(
    existing: Option<&OperatorPortStatus>,
    wanted: &[WantedCondition],
    agents: &[AgentStatus],
    generation: Option<i64>,
    now: Timestamp,
) -> OperatorPortStatus {
    let empty = OperatorPortStatus::default();
    let existing = existing.unwrap_or(&empty);
    let conditions = wanted
        .iter()
        .map(|w| {
            let old = existing.conditions.iter().find(|c| c.type_ == w.type_);
            let last_transition_time = match old {
                Some(old) if old.status == w.status => old.last_transition_time.clone(),
                _ => Time(now),
            };
            Condition {
                type_: w.type_.clone(),
                status: w.status.into(),
                reason: w.reason.clone(),
                message: w.message.clone(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect();
    OperatorPortStatus {
        observed_generation: generation,
        conditions,
        agents: agents.to_vec(),
        agent_summary: agent_summary(agents),
    }
}

/// Past this, the summary names how many more agents there are.
const SUMMARY_MAX: usize = 200;

/// `name=Tunnel` per agent, comma-separated, cut at [`SUMMARY_MAX`] bytes
/// with "+N more"; None without agents.
pub fn agent_summary(agents: &[AgentStatus]) -> Option<String> {
    let mut out = String::new();
    for (i, a) in agents.iter().enumerate() {
        let item = format!("{}={}", a.name, a.tunnel);
        if !out.is_empty() && out.len() + item.len() + 1 > SUMMARY_MAX {
            out.push_str(&format!(",+{} more", agents.len() - i));
            break;
        }
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(&item);
    }
    (!out.is_empty()).then_some(out)
}

/// Condition types that are newly True in `new` compared to `old`: each gets
/// one Event on the Service.
pub fn newly_true<'a>(
    old: Option<&OperatorPortStatus>,
    new: &'a OperatorPortStatus,
) -> Vec<&'a Condition> {
    new.conditions
        .iter()
        .filter(|c| c.type_ != "Ready" && c.status == "True")
        .filter(|c| {
            !old.is_some_and(|o| {
                o.conditions
                    .iter()
                    .any(|oc| oc.type_ == c.type_ && oc.status == "True")
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::FindingKind;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn no_findings_is_ready() {
        let w = wanted_conditions(&[]);
        assert_eq!(w.len(), 1);
        assert_eq!((w[0].type_.as_str(), w[0].status), ("Ready", "True"));
    }

    #[test]
    fn finding_makes_ready_false_with_its_reason() {
        let f = Finding::new(FindingKind::HostnameConflict, "taken".into());
        let w = wanted_conditions(&[f]);
        assert_eq!(w[0].status, "False");
        assert_eq!(w[0].reason, "HostnameConflict");
        assert_eq!(w[1].type_, "HostnameConflict");
    }

    #[test]
    fn many_findings_of_one_kind_make_a_bounded_message() {
        let findings: Vec<Finding> = (0..500)
            .map(|i| {
                Finding::new(
                    FindingKind::HostnameConflict,
                    format!("hostname {i} is taken"),
                )
            })
            .collect();
        let w = wanted_conditions(&findings);
        assert!(
            w.iter()
                .all(|c| c.message.len() <= crate::bounds::MAX_MESSAGE)
        );
        assert!(
            w[1].message.contains(crate::bounds::TRUNCATED),
            "{}",
            w[1].message
        );
    }

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let wanted = wanted_conditions(&[]);
        let first = merged_status(None, &wanted, &[], Some(1), t(100));
        let again = merged_status(Some(&first), &wanted, &[], Some(1), t(200));
        assert_eq!(
            first, again,
            "unchanged inventory -> identical status -> no write"
        );

        let broken = wanted_conditions(&[Finding::new(FindingKind::NoClusterIP, "x".into())]);
        let third = merged_status(Some(&again), &broken, &[], Some(1), t(300));
        assert_eq!(third.conditions[0].last_transition_time, Time(t(300)));
        assert_eq!(newly_true(Some(&again), &third).len(), 1);
        assert!(newly_true(Some(&third), &third).is_empty());
    }
}

#[cfg(test)]
mod health_tests {
    use super::*;
    use crate::inventory::FindingKind;

    #[test]
    fn tunnel_health_decides_ready_unless_a_finding_does() {
        let down = Health {
            status: "False",
            reason: "TunnelDown",
            message: "no agent has the tunnel up: panda: Down (refused)".into(),
        };
        let w = wanted_with_health(&[], Some(&down));
        assert_eq!((w[0].status, w[0].reason.as_str()), ("False", "TunnelDown"));
        assert!(w[0].message.contains("panda: Down (refused)"));

        let clash = Finding::new(FindingKind::OperatorPortClash, "clash".into());
        let up = Health {
            status: "True",
            reason: "TunnelUp",
            message: "tunnel up".into(),
        };
        let w = wanted_with_health(std::slice::from_ref(&clash), Some(&up));
        assert_eq!(w[0].status, "False");
        assert_eq!(w[0].reason, clash.kind.condition_type());

        assert_eq!(wanted_with_health(&[], None), wanted_conditions(&[]));
    }

    #[test]
    fn summary_lists_agents_and_stays_short() {
        let agent = |n: String, t: &str| AgentStatus {
            name: n,
            tunnel: t.into(),
            active_connections: 0,
            last_error: None,
            version: None,
            last_seen: None,
        };
        assert_eq!(agent_summary(&[]), None);
        let two = [agent("mini".into(), "Down"), agent("panda".into(), "Up")];
        assert_eq!(agent_summary(&two).as_deref(), Some("mini=Down,panda=Up"));
        let many: Vec<AgentStatus> = (0..100)
            .map(|i| agent(format!("host-{i:03}"), "Up"))
            .collect();
        let s = agent_summary(&many).unwrap();
        assert!(s.len() < SUMMARY_MAX + 16 && s.ends_with(" more"), "{s}");
    }
}
