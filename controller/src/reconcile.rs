//! Desired inventory vs what exists -> the writes to make. Pure: an unchanged
//! inventory yields an empty plan, so a resync causes zero writes.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;

use crate::conditions::{merged_status, wanted_with_health};
use crate::crd::{OperatorPort, OperatorPortStatus};
use crate::inventory::{Desired, DesiredPort};

pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGER: &str = "portplane-controller";
pub const INSTANCE_LABEL: &str = "portplane.dev/instance";

/// The labels on every object the controller owns.
pub fn owned_labels(instance: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), MANAGER.to_string()),
        (INSTANCE_LABEL.to_string(), instance.to_string()),
    ])
}

/// The label selector for the objects an instance owns.
pub fn owned_selector(instance: &str) -> String {
    format!("{MANAGED_BY_LABEL}={MANAGER},{INSTANCE_LABEL}={instance}")
}

/// One write.
#[derive(Debug, Clone, PartialEq)]
pub enum Action<'a> {
    /// Server-side apply the spec (create or update), then the status.
    /// Borrowed: at 10,000 ports a copy of the desired set is megabytes.
    Apply(&'a DesiredPort),
    /// Only the status differs.
    Status(Box<OperatorPortStatus>),
    /// An owned object that is no longer desired.
    Delete,
}

/// Name -> action, for every object that needs a write.
pub type Plan<'a> = BTreeMap<String, Action<'a>>;

/// Compare desired and existing (the objects this instance owns).
pub fn plan<'a>(
    desired: &'a Desired,
    existing: &BTreeMap<String, &OperatorPort>,
    instance: &str,
    now: Timestamp,
) -> Plan<'a> {
    let labels = owned_labels(instance);
    let mut plan = Plan::new();
    for (name, want) in desired {
        let Some(current) = existing.get(name) else {
            plan.insert(name.clone(), Action::Apply(want));
            continue;
        };
        let has_labels = current
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| labels.iter().all(|(k, v)| l.get(k) == Some(v)));
        if !current.spec.is(&want.spec) || !has_labels {
            plan.insert(name.clone(), Action::Apply(want));
            continue;
        }
        let status = merged_status(
            current.status.as_ref(),
            &wanted_with_health(&want.findings, want.health.as_ref()),
            &want.agents,
            current.metadata.generation,
            now,
        );
        if current.status.as_ref() != Some(&status) {
            plan.insert(name.clone(), Action::Status(Box::new(status)));
        }
    }
    for name in existing.keys() {
        if !desired.contains_key(name) {
            plan.insert(name.clone(), Action::Delete);
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conditions::wanted_conditions;
    use crate::config::Config;
    use crate::inventory::{Finding, FindingKind, desired_inventory};
    use kube::api::ObjectMeta;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    /// What the API server would hold after the plan's writes.
    fn applied(desired: &Desired, now: Timestamp) -> Vec<OperatorPort> {
        desired
            .iter()
            .map(|(name, want)| {
                let mut o = OperatorPort::new(name, (&want.spec).into());
                o.metadata = ObjectMeta {
                    name: Some(name.clone()),
                    generation: Some(1),
                    labels: Some(owned_labels("default")),
                    ..Default::default()
                };
                o.status = Some(merged_status(
                    None,
                    &wanted_conditions(&want.findings),
                    &want.agents,
                    Some(1),
                    now,
                ));
                o
            })
            .collect()
    }

    fn index(objects: &[OperatorPort]) -> BTreeMap<String, &OperatorPort> {
        objects
            .iter()
            .map(|o| (o.metadata.name.clone().unwrap(), o))
            .collect()
    }

    #[test]
    fn empty_cluster_applies_everything() {
        let desired = desired_inventory(
            [],
            &Default::default(),
            &Default::default(),
            &Config::default().policy().unwrap(),
        );
        let p = plan(&desired, &BTreeMap::new(), "default", t(1));
        assert_eq!(p.len(), 2, "the two default operator ports");
        assert!(p.values().all(|a| matches!(a, Action::Apply(_))));
    }

    #[test]
    fn unchanged_inventory_plans_no_writes() {
        let desired = desired_inventory(
            [],
            &Default::default(),
            &Default::default(),
            &Config::default().policy().unwrap(),
        );
        let objects = applied(&desired, t(1));
        let p = plan(&desired, &index(&objects), "default", t(999));
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn orphans_are_deleted_and_changes_applied() {
        let desired = desired_inventory(
            [],
            &Default::default(),
            &Default::default(),
            &Config::default().policy().unwrap(),
        );
        let mut objects = applied(&desired, t(1));
        let mut orphan = objects[0].clone();
        orphan.metadata.name = Some("gone.redis.6379".into());
        objects.push(orphan);
        objects[0].spec.port = 1;
        let p = plan(&desired, &index(&objects), "default", t(2));
        assert_eq!(p.get("gone.redis.6379"), Some(&Action::Delete));
        assert!(matches!(p.get("kube-apiserver"), Some(Action::Apply(_))));
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn new_finding_is_a_status_only_write() {
        let mut desired = desired_inventory(
            [],
            &Default::default(),
            &Default::default(),
            &Config::default().policy().unwrap(),
        );
        let objects = applied(&desired, t(1));
        if let Some(port) = desired.get_mut("talos-api") {
            port.findings
                .push(Finding::new(FindingKind::OperatorPortClash, "x".into()));
        }
        let p = plan(&desired, &index(&objects), "default", t(2));
        assert_eq!(p.len(), 1);
        let Some(Action::Status(status)) = p.get("talos-api") else {
            panic!("{p:?}")
        };
        assert_eq!(status.conditions[0].status, "False");
    }
}
