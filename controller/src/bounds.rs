//! Limits on everything that reaches the controller from outside (agent
//! reports, Service annotations, the Tailscale operator's proxy Secrets), so
//! that no input can grow memory or an object without bound.
//!
//! Why: one agent report carrying a 1 MiB `last_error` made the OperatorPort
//! status write exceed the API server's request limit (`ResourceExhausted
//! ... 2227377 vs. 2097152`), and the reconcile then failed in a loop. Every
//! cut is visible: a truncated string ends in [`TRUNCATED`] with the original
//! length, a shortened list ends in an entry that says how many were left
//! out.

use portplane_proto::v1alpha1 as pb;

use crate::crd::AgentStatus;
use crate::inventory::{Desired, DesiredPort};

/// Condition messages, findings, last errors: long enough for any message
/// this project writes and a useful prefix of anything else.
pub const MAX_MESSAGE: usize = 1024;
/// Hostnames and FQDNs (a DNS name is at most 253 characters).
pub const MAX_NAME: usize = 253;
/// Short fields: versions, protocols, addresses, tags, tunnel states.
pub const MAX_SHORT: usize = 128;
/// Agents listed in one object's status.
pub const MAX_AGENTS_PER_OBJECT: usize = 16;
/// Tags and tailnet IPs per exposure.
pub const MAX_LIST: usize = 16;
/// Exposures per object (there are three kinds; more is a bug).
pub const MAX_EXPOSURES: usize = 8;
/// Tunnels and host ports in one agent report.
pub const MAX_TUNNELS_PER_REPORT: usize = 64;
pub const MAX_HOST_PORTS_PER_REPORT: usize = 1024;
/// Agents whose latest report the controller keeps.
pub const MAX_AGENTS: usize = 256;
/// Largest `Report` or other request the gRPC server decodes, in bytes
/// (tonic's default is 4 MiB). A full report is far smaller: 64 tunnels and
/// 1,024 host ports of short strings are under 100 KiB.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// The cut is portplane-core's, shared with the agent.
pub use portplane_core::text::{TRUNCATED, truncate};

fn truncate_in_place(s: &mut String, max: usize) {
    if s.len() > max {
        *s = truncate(s, max);
    }
}

/// Keep at most `max` entries of a string list; the last kept one says how
/// many were left out.
fn cap_strings(list: &mut Vec<String>, max: usize, each: usize) {
    if list.len() > max {
        let left_out = list.len() - (max - 1);
        list.truncate(max - 1);
        list.push(format!("… and {left_out} more"));
    }
    for s in list {
        truncate_in_place(s, each);
    }
}

/// Cap an agent report as it arrives: every string, the number of tunnels
/// and of host ports (a trailing tunnel entry says how many were dropped).
pub fn cap_report(report: &mut pb::AgentReport) {
    truncate_in_place(&mut report.agent, MAX_NAME);
    truncate_in_place(&mut report.version, MAX_SHORT);
    if report.tunnels.len() > MAX_TUNNELS_PER_REPORT {
        let left_out = report.tunnels.len() - (MAX_TUNNELS_PER_REPORT - 1);
        report.tunnels.truncate(MAX_TUNNELS_PER_REPORT - 1);
        report.tunnels.push(pb::TunnelReport {
            forward: format!("… and {left_out} more tunnels (the report was cut)"),
            ..Default::default()
        });
    }
    for t in &mut report.tunnels {
        truncate_in_place(&mut t.forward, MAX_NAME);
        truncate_in_place(&mut t.listen, MAX_SHORT);
        truncate_in_place(&mut t.target, MAX_NAME);
        truncate_in_place(&mut t.last_error, MAX_MESSAGE);
    }
    // Host ports carry no free text worth keeping past the limit; they are
    // numbers, so the count is the only visible trace.
    report.host_ports.truncate(MAX_HOST_PORTS_PER_REPORT);
    for h in &mut report.host_ports {
        truncate_in_place(&mut h.protocol, MAX_SHORT);
        truncate_in_place(&mut h.host_ip, MAX_SHORT);
    }
    // Second owners name processes; as many as host ports can exist.
    report.second_owners.truncate(MAX_HOST_PORTS_PER_REPORT);
    for o in &mut report.second_owners {
        truncate_in_place(&mut o.address, MAX_SHORT);
        truncate_in_place(&mut o.process, MAX_SHORT);
        truncate_in_place(&mut o.command, MAX_MESSAGE);
    }
}

/// Cap every object of the desired inventory (spec and what goes into its
/// status) so that no object can outgrow what the API server accepts.
pub fn cap_desired(desired: &mut Desired) {
    for port in desired.values_mut() {
        cap_port(port);
    }
}

fn cap_port(port: &mut DesiredPort) {
    let spec = &mut port.spec;
    if let Some(endpoint) = &mut spec.endpoint {
        truncate_in_place(endpoint, MAX_NAME);
    }
    if let Some(target) = &mut spec.target {
        truncate_in_place(&mut target.host, MAX_NAME);
    }
    spec.exposures.truncate(MAX_EXPOSURES);
    for e in &mut spec.exposures {
        for name in [&mut e.hostname, &mut e.fqdn].into_iter().flatten() {
            truncate_in_place(name, MAX_NAME);
        }
        cap_strings(&mut e.tailnet_ips, MAX_LIST, MAX_SHORT);
        cap_strings(&mut e.tags, MAX_LIST, MAX_SHORT);
    }
    for f in &mut port.findings {
        truncate_in_place(&mut f.message, MAX_MESSAGE);
    }
    cap_agents(&mut port.agents);
}

/// At most [`MAX_AGENTS_PER_OBJECT`] entries (sorted by name, so the choice
/// is stable); the last says how many agents were left out.
fn cap_agents(agents: &mut Vec<AgentStatus>) {
    agents.sort_by(|a, b| a.name.cmp(&b.name));
    if agents.len() > MAX_AGENTS_PER_OBJECT {
        let left_out = agents.len() - (MAX_AGENTS_PER_OBJECT - 1);
        agents.truncate(MAX_AGENTS_PER_OBJECT - 1);
        agents.push(AgentStatus {
            name: format!("… and {left_out} more agents"),
            tunnel: "Omitted".into(),
            active_connections: 0,
            last_error: None,
            version: None,
            last_seen: None,
        });
    }
    for a in agents {
        truncate_in_place(&mut a.name, MAX_NAME);
        truncate_in_place(&mut a.tunnel, MAX_SHORT);
        if let Some(e) = &mut a.last_error {
            truncate_in_place(e, MAX_MESSAGE);
        }
        if let Some(v) = &mut a.version {
            truncate_in_place(v, MAX_SHORT);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_report_is_cut_to_its_limits() {
        let mut report = pb::AgentReport {
            agent: "a".repeat(10_000),
            version: "v".repeat(10_000),
            tunnels: (0..1000)
                .map(|i| pb::TunnelReport {
                    forward: format!("f{i}"),
                    last_error: "x".repeat(100_000),
                    ..Default::default()
                })
                .collect(),
            host_ports: vec![pb::HostPort::default(); 100_000],
            second_owners: vec![
                pb::SecondOwner {
                    command: "c".repeat(100_000),
                    ..Default::default()
                };
                100_000
            ],
        };
        cap_report(&mut report);
        assert_eq!(report.second_owners.len(), MAX_HOST_PORTS_PER_REPORT);
        assert!(report.second_owners[0].command.len() <= MAX_MESSAGE);
        assert!(report.agent.len() <= MAX_NAME);
        assert_eq!(report.tunnels.len(), MAX_TUNNELS_PER_REPORT);
        assert!(
            report
                .tunnels
                .iter()
                .all(|t| t.last_error.len() <= MAX_MESSAGE)
        );
        assert!(
            report.tunnels[MAX_TUNNELS_PER_REPORT - 1]
                .forward
                .contains("937 more tunnels")
        );
        assert_eq!(report.host_ports.len(), MAX_HOST_PORTS_PER_REPORT);
    }

    #[test]
    fn many_agents_on_one_object_end_in_a_visible_count() {
        let mut agents: Vec<AgentStatus> = (0..100)
            .map(|i| AgentStatus {
                name: format!("host-{i:03}"),
                tunnel: "Up".into(),
                active_connections: 0,
                last_error: Some("e".repeat(5000)),
                version: None,
                last_seen: None,
            })
            .collect();
        cap_agents(&mut agents);
        assert_eq!(agents.len(), MAX_AGENTS_PER_OBJECT);
        assert_eq!(agents[0].name, "host-000");
        assert_eq!(
            agents[MAX_AGENTS_PER_OBJECT - 1].name,
            "… and 85 more agents"
        );
        assert!(
            agents
                .iter()
                .all(|a| a.last_error.as_ref().is_none_or(|e| e.len() <= MAX_MESSAGE))
        );
    }

    #[test]
    fn the_agent_registry_refuses_new_agents_when_full_but_not_known_ones() {
        let mut registry = crate::grpc::AgentRegistry::default();
        let report = |name: String| pb::AgentReport {
            agent: name,
            ..Default::default()
        };
        for i in 0..MAX_AGENTS {
            registry.record(report(format!("agent-{i}"))).unwrap();
        }
        let refused = registry.record(report("one-too-many".into())).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("256 agents"),
            "{}",
            refused.message()
        );
        registry.record(report("agent-7".into())).unwrap();
    }
}
