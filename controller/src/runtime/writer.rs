//! Executes a reconcile plan: server-side apply with our field manager,
//! status through the status subresource, orphans deleted, an Event on the
//! Service for every problem that newly appears.

use std::collections::BTreeMap;
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
use crate::conditions::{merged_status, newly_true, wanted_conditions};
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
    let results: Vec<Result<(), Error>> = futures::stream::iter(plan)
        .map(|(name, action)| {
            let current = existing.get(&name).cloned();
            async move { execute(ctx, &name, action, current).await }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let mut first_error = None;
    for r in results {
        if let Err(e) = r {
            tracing::warn!(error = %e, "write failed");
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

async fn execute(
    ctx: &Context,
    name: &str,
    action: Action,
    current: Option<Arc<OperatorPort>>,
) -> Result<(), Error> {
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
                spec: want.spec.clone(),
                status: None,
            };
            let applied = api.patch(name, &params, &Patch::Apply(&body)).await?;
            ctx.metrics.applies.fetch_add(1, Ordering::Relaxed);
            let status = merged_status(
                applied.status.as_ref(),
                &wanted_conditions(&want.findings),
                &want.agents,
                applied.metadata.generation,
                Timestamp::now(),
            );
            if applied.status.as_ref() == Some(&status) {
                ctx.overlay.written(applied);
            } else {
                write_status(ctx, &api, name, applied.status.as_ref(), status).await?;
            }
        }
        Action::Status(status) => {
            let old = current.as_ref().and_then(|c| c.status.as_ref());
            write_status(ctx, &api, name, old, *status).await?;
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
    Ok(())
}

async fn write_status(
    ctx: &Context,
    api: &Api<OperatorPort>,
    name: &str,
    old: Option<&OperatorPortStatus>,
    status: OperatorPortStatus,
) -> Result<(), Error> {
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
    for condition in newly_true(old, &status) {
        publish_event(
            ctx,
            written.spec.service.as_ref(),
            &condition.type_,
            &condition.message,
        )
        .await;
    }
    ctx.overlay.written(written);
    Ok(())
}

/// A Warning Event on the Service the port belongs to. Failing to publish is
/// logged, never fatal: the condition on the OperatorPort carries the same news.
async fn publish_event(
    ctx: &Context,
    service: Option<&crate::crd::ServiceRef>,
    reason: &str,
    message: &str,
) {
    let Some(service) = service else { return };
    let uid = ctx
        .stores
        .services
        .get(&ObjectRef::new(&service.name).within(&service.namespace))
        .and_then(|s| s.metadata.uid.clone());
    let reference = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Service".into()),
        name: Some(service.name.clone()),
        namespace: Some(service.namespace.clone()),
        uid,
        ..Default::default()
    };
    let event = Event {
        type_: EventType::Warning,
        reason: reason.into(),
        note: Some(message.chars().take(1000).collect()),
        action: "Validate".into(),
        secondary: None,
    };
    match ctx.recorder.publish(&event, &reference).await {
        Ok(()) => {
            ctx.metrics.events.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => tracing::warn!(error = %e, service = %service.name, "cannot publish event"),
    }
}
