//! The ownership rule: operator ports (kube API, Talos API) belong to the
//! agent; runtime ports (Redis, Inngest, ...) belong to Colima/Lima or the
//! Tailscale operator, and a second owner of one is a defect. So a forward
//! that listens on a runtime port, or targets a runtime service, is refused.
//! The inventory comes from the last one the controller sent, cached on disk;
//! without a cache nothing is refused (the tunnel never waits for it).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::Forward;

/// The controller's inventory as cached on disk (JSON, the `Inventory`
/// message's fields).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct CachedInventory {
    #[serde(default)]
    pub revision: u64,
    #[serde(default)]
    pub runtime_ports: Vec<RuntimePort>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct RuntimePort {
    /// `<namespace>.<service>.<port>`.
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub service: String,
    pub port: u16,
    #[serde(default)]
    pub node_port: u16,
    #[serde(default)]
    pub hostnames: Vec<String>,
}

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

/// Why `forward` may not be tunneled, when it may not.
pub fn refusal(forward: &Forward, inventory: &CachedInventory) -> Option<String> {
    let rule = "runtime ports belong to Colima/Lima or the Tailscale operator; portplane-agent \
                tunnels only operator ports (kube API, Talos API), so a second owner cannot \
                shadow a runtime port. Pick another listen port or remove this [[forward]]";
    for rp in &inventory.runtime_ports {
        let listen = forward.listen.port();
        if listen == rp.port || (rp.node_port != 0 && listen == rp.node_port) {
            return Some(format!(
                "forward \"{}\" refused: listen port {listen} is runtime port {} \
                 (inventory revision {}); {rule}",
                forward.name, rp.name, inventory.revision
            ));
        }
        if targets_service(&forward.target.host, forward.target.port, rp) {
            return Some(format!(
                "forward \"{}\" refused: target {} is runtime service {} \
                 (inventory revision {}); {rule}",
                forward.name, forward.target, rp.name, inventory.revision
            ));
        }
    }
    None
}

fn targets_service(host: &str, port: u16, rp: &RuntimePort) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let service_names = [
        format!("{}.{}", rp.service, rp.namespace),
        format!("{}.{}.svc", rp.service, rp.namespace),
        format!("{}.{}.svc.cluster.local", rp.service, rp.namespace),
    ];
    let named = !rp.service.is_empty() && service_names.contains(&host);
    let tailnet = rp.hostnames.iter().any(|h| {
        let h = h.trim_end_matches('.').to_ascii_lowercase();
        h == host || h.split('.').next() == Some(host.as_str())
    });
    ((named || tailnet) && port == rp.port) || (rp.node_port != 0 && port == rp.node_port)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forward(listen: u16, target: &str) -> Forward {
        Forward {
            name: "f".into(),
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], listen)),
            target: target.parse().unwrap(),
        }
    }

    fn inventory() -> CachedInventory {
        serde_json::from_str(
            r#"{"revision": 7, "runtime_ports": [
                {"name": "joelclaw.redis.6379", "namespace": "joelclaw", "service": "redis",
                 "port": 6379, "node_port": 30079, "hostnames": ["joelclaw-redis.tail1.ts.net."]}
            ]}"#,
        )
        .unwrap()
    }

    #[test]
    fn operator_forward_passes() {
        assert_eq!(
            refusal(&forward(16443, "10.5.0.2:6443"), &inventory()),
            None
        );
    }

    #[test]
    fn listen_on_runtime_port_is_refused_explaining_the_rule() {
        let why = refusal(&forward(6379, "10.5.0.2:6443"), &inventory()).unwrap();
        assert!(
            why.contains("listen port 6379 is runtime port joelclaw.redis.6379"),
            "{why}"
        );
        assert!(
            why.contains("belong to Colima/Lima or the Tailscale operator"),
            "{why}"
        );
        assert!(refusal(&forward(30079, "10.5.0.2:6443"), &inventory()).is_some());
    }

    #[test]
    fn target_naming_a_runtime_service_is_refused() {
        for target in [
            "redis.joelclaw:6379",
            "redis.joelclaw.svc.cluster.local:6379",
            "joelclaw-redis.tail1.ts.net:6379",
            "joelclaw-redis:6379",
            "10.5.0.2:30079",
        ] {
            let why = refusal(&forward(16379, target), &inventory());
            assert!(
                why.is_some_and(|w| w.contains("runtime service")),
                "{target}"
            );
        }
        assert_eq!(
            refusal(&forward(16379, "redis.joelclaw:6380"), &inventory()),
            None
        );
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
