//! Agent credentials for tests: real ServiceAccounts and real tokens from the
//! control plane (`kubectl create serviceaccount`, `kubectl create token`),
//! and a gRPC client that presents one the way the agent does.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use portplane_proto::v1alpha1 as pb;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::cluster::ControlPlane;

/// The audience the controller reviews agent tokens for.
pub const AUDIENCE: &str = "portplane.dev/agent";

/// Create ServiceAccount `sa` in `namespace` (if missing) and return a token
/// for it: bound to `audience`, or to the API server's default audience
/// when None.
pub fn service_account_token(
    plane: &ControlPlane,
    namespace: &str,
    sa: &str,
    audience: Option<&str>,
) -> String {
    let out = plane
        .kubectl()
        .args(["create", "serviceaccount", sa, "-n", namespace])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || err.contains("AlreadyExists") || err.contains("already exists"),
        "create serviceaccount {namespace}/{sa}: {err}"
    );
    let mut args = vec!["create", "token", sa, "-n", namespace];
    if let Some(a) = audience {
        args.extend(["--audience", a]);
    }
    plane
        .kubectl_output(&args)
        .unwrap_or_else(|e| panic!("{e}"))
        .trim()
        .to_string()
}

/// The token of agent `name` (ServiceAccount `portplane-agent-<name>`).
pub fn agent_token(plane: &ControlPlane, namespace: &str, name: &str) -> String {
    service_account_token(
        plane,
        namespace,
        &format!("portplane-agent-{name}"),
        Some(AUDIENCE),
    )
}

/// Write `token` to `dir/agent-token`, mode 0600, as `enroll` does.
pub fn write_token(dir: &Path, token: &str) -> PathBuf {
    let path = dir.join("agent-token");
    std::fs::write(&path, token).unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("{e}"));
    path
}

/// Adds `authorization: Bearer <token>` when it has one.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

pub type AgentClient =
    pb::port_inventory_client::PortInventoryClient<InterceptedService<Channel, Bearer>>;

/// A client of the controller's gRPC on loopback `port`, presenting `token`.
pub async fn agent_client(port: u16, token: Option<&str>) -> AgentClient {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap_or_else(|e| panic!("{e}"))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to the controller's gRPC: {e}"));
    let header = token.map(|t| {
        format!("Bearer {t}")
            .parse()
            .unwrap_or_else(|e| panic!("token as header: {e}"))
    });
    pb::port_inventory_client::PortInventoryClient::with_interceptor(channel, Bearer(header))
}

/// A report of one Up tunnel of `forward` with `active` connections.
pub fn up_report(agent: &str, forward: &str, active: u32) -> pb::AgentReport {
    pb::AgentReport {
        agent: agent.into(),
        version: "e2e".into(),
        tunnels: vec![pb::TunnelReport {
            forward: forward.into(),
            listen: "127.0.0.1:16443".into(),
            target: "10.5.0.2:6443".into(),
            state: pb::TunnelState::Up as i32,
            active_connections: active,
            last_error: String::new(),
        }],
        host_ports: Vec::new(),
        second_owners: Vec::new(),
    }
}
