//! Executes a reconcile plan: server-side apply with our field manager,
//! status through the status subresource, orphans deleted, an Event on the
//! Service for every problem that newly appears.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use super::Context;
use crate::Error;
use crate::conditions::{merged_status, newly_true, wanted_with_health};
use crate::crd::{OperatorPort, OperatorPortStatus};
use crate::inventory::Desired;
use crate::reconcile::{Action, MANAGER, owned_labels, plan};

/// Parallel writes in flight; enough to converge 10,000 objects quickly
/// without flooding the API server's max-in-flight budget.
const CONCURRENCY: usize = 64;

pub async fn write_difference(ctx: &Context, desired: &Desired) -> Result<(), Error> {
    let existing = ctx.overlay.existing(&ctx.stores.operator_ports);
    let by_name: BTreeMap<String, &OperatorPort> = existing
        .iter()
        .map(|(k, v)| (k.clone(), v.as_ref()))
        .collect();
    let plan = plan(desired, &by_name, &ctx.config.instance, Timestamp::now());
    if plan.is_empty() {
        return Ok(());
    }
    tracing::debug!(writes = plan.len(), "applying plan");
    let results: Vec<Result<Vec<WarningEvent>, Error>> = futures::stream::iter(plan)
        .map(|(name, action)| {
            let current = existing.get(&name).cloned();
            async move { execute(ctx, &name, action, current).await }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let mut first_error = None;
    // A problem of the whole Service (a near-miss annotation, a hostname
    // clash) shows on each of its ports; the Service hears of it once.
    let mut events = BTreeSet::new();
    for r in results {
        match r {
            Ok(new) => events.extend(new),
            Err(e) => {
                tracing::warn!(error = %e, "write failed");
                first_error.get_or_insert(e);
            }
        }
    }
    for event in &events {
        publish_event(ctx, event).await;
    }
    first_error.map_or(Ok(()), Err)
}

/// A Warning Event owed to a Service for a condition that newly turned true.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct WarningEvent {
    namespace: String,
    service: String,
    reason: String,
    message: String,
}

async fn execute(
    ctx: &Context,
    name: &str,
    action: Action<'_>,
    current: Option<Arc<OperatorPort>>,
) -> Result<Vec<WarningEvent>, Error> {
    let api: Api<OperatorPort> = Api::all(ctx.client.clone());
    let params = PatchParams::apply(MANAGER).force();
    match action {
        Action::Apply(want) => {
            let body = OperatorPort {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    labels: Some(owned_labels(&ctx.config.instance)),
                    ..Default::default()
                },
                spec: (&want.spec).into(),
                status: None,
            };
            let applied = api.patch(name, &params, &Patch::Apply(&body)).await?;
            ctx.metrics.applies.fetch_add(1, Ordering::Relaxed);
            let status = merged_status(
                applied.status.as_ref(),
                &wanted_with_health(&want.findings, want.health.as_ref()),
                &want.agents,
                applied.metadata.generation,
                Timestamp::now(),
            );
            if applied.status.as_ref() == Some(&status) {
                ctx.overlay.written(applied, &ctx.stores.operator_ports);
            } else {
                let old = applied.status.clone();
                return write_status(ctx, &api, name, old.as_ref(), status).await;
            }
        }
        Action::Status(status) => {
            let old = current.as_ref().and_then(|c| c.status.as_ref());
            return write_status(ctx, &api, name, old, *status).await;
        }
        Action::Delete => {
            match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => {}
                // Already gone: the goal is reached.
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
            ctx.metrics.deletes.fetch_add(1, Ordering::Relaxed);
            if let Some(current) = current {
                ctx.overlay.deleted(name, &current);
            }
        }
    }
    Ok(Vec::new())
}

async fn write_status(
    ctx: &Context,
    api: &Api<OperatorPort>,
    name: &str,
    old: Option<&OperatorPortStatus>,
    status: OperatorPortStatus,
) -> Result<Vec<WarningEvent>, Error> {
    let body = json!({
        "apiVersion": "portplane.dev/v1alpha1",
        "kind": "OperatorPort",
        "status": status,
    });
    let params = PatchParams::apply(MANAGER).force();
    let written = api
        .patch_status(name, &params, &Patch::Apply(&body))
        .await?;
    ctx.metrics.status_writes.fetch_add(1, Ordering::Relaxed);
    let events = match written.spec.service.as_ref() {
        Some(service) => newly_true(old, &status)
            .into_iter()
            .map(|condition| WarningEvent {
                namespace: service.namespace.clone(),
                service: service.name.clone(),
                reason: condition.type_.clone(),
                message: condition.message.clone(),
            })
            .collect(),
        None => Vec::new(),
    };
    ctx.overlay.written(written, &ctx.stores.operator_ports);
    Ok(events)
}

/// A Warning Event on the Service the port belongs to. Failing to publish is
/// logged, never fatal: the condition on the OperatorPort carries the same news.
async fn publish_event(ctx: &Context, warning: &WarningEvent) {
    let uid = ctx
        .stores
        .services
        .get(&ObjectRef::new(&warning.service).within(&warning.namespace))
        .and_then(|s| s.metadata.uid.clone());
    let reference = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Service".into()),
        name: Some(warning.service.clone()),
        namespace: Some(warning.namespace.clone()),
        uid,
        ..Default::default()
    };
    let event = Event {
        type_: EventType::Warning,
        reason: warning.reason.clone(),
        note: Some(warning.message.chars().take(1000).collect()),
        action: "Validate".into(),
        secondary: None,
    };
    match ctx.recorder.publish(&event, &reference).await {
        Ok(()) => {
            ctx.metrics.events.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => tracing::warn!(error = %e, service = %warning.service, "cannot publish event"),
    }
}
