//! The ownership rule: operator ports (kube API, Talos API) belong to the
//! agent; runtime ports (Redis, Inngest, ...) belong to Colima/Lima or the
//! Tailscale operator, and a second owner of one is a defect. So a forward
//! that listens on a runtime port, or targets a runtime service, is refused.
//! The inventory comes from the last one the controller sent, cached on disk;
//! without a cache nothing is refused (the tunnel never waits for it).

use std::path::Path;

use crate::config::Forward;

/// The controller's inventory as cached on disk (JSON, the `Inventory`
/// message's fields); the rule itself is `portplane_core::ownership`.
pub use portplane_core::ownership::{Inventory as CachedInventory, RuntimePort};

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("{path}: cannot read the cached inventory: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a cached inventory (expected JSON with `runtime_ports`): {source}")]
    Parse {
        path: std::path::PathBuf,
        source: serde_json::Error,
    },
}

/// The cached inventory; `Ok(None)` when there is none yet.
pub fn load_cache(path: &Path) -> Result<Option<CachedInventory>, InventoryError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(InventoryError::Read {
                path: path.into(),
                source,
            });
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| InventoryError::Parse {
            path: path.into(),
            source,
        })
}

/// Why `forward` may not be tunneled, when it may not (the rule:
/// [`portplane_core::ownership::refusal`]).
pub fn refusal(forward: &Forward, inventory: &CachedInventory) -> Option<String> {
    portplane_core::ownership::refusal(
        portplane_core::ownership::ForwardClaim {
            name: &forward.name,
            listen: forward.listen,
            target: &forward.target,
        },
        inventory,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent's forwards go through the core rule, protocol included
    /// (its cases are tested in `portplane_core::ownership`).
    #[test]
    fn a_forward_meets_the_core_rule() {
        let inventory: CachedInventory = serde_json::from_str(
            r#"{"revision": 7, "runtime_ports": [
                {"name": "joelclaw.livekit.7882-udp", "port": 7882, "protocol": "UDP"},
                {"name": "joelclaw.redis.6379", "port": 6379}
            ]}"#,
        )
        .unwrap();
        let forward = |listen: u16| Forward {
            name: "f".into(),
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], listen)),
            target: "10.5.0.2:6443".parse().unwrap(),
        };
        assert_eq!(refusal(&forward(7882), &inventory), None);
        assert!(refusal(&forward(6379), &inventory).is_some_and(|w| w.contains("(TCP)")));
    }

    #[test]
    fn missing_cache_is_no_inventory_and_garbage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_cache(&dir.path().join("none.json")).unwrap().is_none());
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{").unwrap();
        let err = load_cache(&bad).unwrap_err().to_string();
        assert!(
            err.contains("bad.json") && err.contains("runtime_ports"),
            "{err}"
        );
    }
}
