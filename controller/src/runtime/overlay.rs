//! Our own writes, remembered until the watch catches up, so a reconcile that
//! runs right after a write does not see the stale object and write again.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::runtime::reflector::{ObjectRef, Store};

use crate::crd::OperatorPort;

/// How long a write is trusted over the watch (after that the watch wins,
/// e.g. when someone else deleted the object in between).
const TRUST: Duration = Duration::from_secs(30);

struct Entry {
    resource_version: u64,
    object: Option<Arc<OperatorPort>>,
    at: Instant,
}

/// Past this many entries a write first drops those the watch has caught up
/// with, so a large first convergence does not hold a second copy of every
/// object it wrote.
const PRUNE_AT: usize = 256;

#[derive(Default)]
pub struct Overlay {
    entries: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    by_name: HashMap<String, Entry>,
    /// Size at which the next prune runs: doubles past what a prune leaves,
    /// so pruning stays amortised O(1) per write while the watch lags.
    prune_at: usize,
}

fn rv(o: &OperatorPort) -> u64 {
    // resourceVersions are etcd revisions in practice; an unparsable one
    // sorts first, which only costs a redundant (idempotent) write.
    o.metadata
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Only spec, labels, status, generation and resourceVersion of an
/// OperatorPort are ever compared; at 10,000 objects the rest of the metadata
/// (managedFields above all) is most of the memory.
pub fn trim(object: &mut OperatorPort) {
    let meta = std::mem::take(&mut object.metadata);
    object.metadata = kube::api::ObjectMeta {
        name: meta.name,
        labels: meta.labels,
        generation: meta.generation,
        resource_version: meta.resource_version,
        ..Default::default()
    };
}

impl Overlay {
    pub fn written(&self, mut object: OperatorPort, store: &Store<OperatorPort>) {
        let Some(name) = object.metadata.name.clone() else {
            return;
        };
        trim(&mut object);
        let entry = Entry {
            resource_version: rv(&object),
            object: Some(Arc::new(object)),
            at: Instant::now(),
        };
        if let Ok(mut entries) = self.entries.lock() {
            if entries.by_name.len() >= entries.prune_at.max(PRUNE_AT) {
                entries.by_name.retain(|name, entry| {
                    let caught_up = entry.object.is_some()
                        && store
                            .get(&ObjectRef::new(name))
                            .is_some_and(|seen| rv(&seen) >= entry.resource_version);
                    !caught_up && entry.at.elapsed() <= TRUST
                });
                entries.prune_at = 2 * entries.by_name.len();
            }
            entries.by_name.insert(name, entry);
        }
    }

    pub fn deleted(&self, name: &str, last_seen: &OperatorPort) {
        let entry = Entry {
            resource_version: rv(last_seen),
            object: None,
            at: Instant::now(),
        };
        if let Ok(mut entries) = self.entries.lock() {
            entries.by_name.insert(name.to_string(), entry);
        }
    }

    /// The store's objects, with our newer writes laid over them.
    pub fn existing(&self, store: &Store<OperatorPort>) -> BTreeMap<String, Arc<OperatorPort>> {
        let mut objects: BTreeMap<String, Arc<OperatorPort>> = store
            .state()
            .into_iter()
            .filter_map(|o| Some((o.metadata.name.clone()?, o)))
            .collect();
        let Ok(mut entries) = self.entries.lock() else {
            return objects;
        };
        entries.by_name.retain(|name, entry| {
            if entry.at.elapsed() > TRUST {
                return false;
            }
            match (objects.get(name), &entry.object) {
                // The watch has caught up with our write.
                (Some(seen), Some(_)) if rv(seen) >= entry.resource_version => false,
                (None, None) => false,
                // Deleted by us, the watch still shows the old object.
                (Some(seen), None) if rv(seen) <= entry.resource_version => {
                    objects.remove(name);
                    true
                }
                (Some(_), None) => false,
                (_, Some(ours)) => {
                    objects.insert(name.clone(), ours.clone());
                    true
                }
            }
        });
        objects
    }
}
