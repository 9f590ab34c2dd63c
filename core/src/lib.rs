//! portplane's one definition of the port model and the ownership rule.
//!
//! Operator ports (kube API, Talos API) belong to the host agent, which
//! tunnels them on dedicated loopback ports; runtime ports (Redis, Inngest,
//! ...) belong to Colima/Lima or the Tailscale operator, one owner per port
//! and protocol. The controller computes the inventory with
//! [`inventory::desired_inventory`]; the agent refuses a forward with
//! [`ownership::refusal`]; the wire conversions (crate `portplane-proto`,
//! module `convert`) map these types to and from the gRPC messages.
//!
//! [`text::truncate`] is the one way a string from outside is cut to a
//! bound, in both binaries.
//!
//! Pure by construction: no Kubernetes client, no async runtime, no RPC, no
//! I/O. Every input is plain data, so every rule is a unit test.

pub mod address;
pub mod inventory;
pub mod model;
pub mod names;
pub mod ownership;
pub mod protocol;
pub mod text;

pub use address::{HostPort, check_loopback_listen};
pub use model::{
    Exposure, ExposureKind, FqdnSource, LocalEndpoint, Plane, PortSpec, ServiceRef, TargetEndpoint,
};
pub use names::{is_dns_label, is_dns_subdomain, object_name};
pub use protocol::Protocol;
