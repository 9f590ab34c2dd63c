//! portplane-controller: publishes the cluster's port inventory as
//! `OperatorPort` resources and serves it to host agents over gRPC.
//!
//! Layout: [`crd`] (types), [`config`], [`inventory`] (pure: cluster state ->
//! desired objects + findings), [`conditions`] and [`reconcile`] (pure:
//! desired vs existing -> writes), [`runtime`] (watches, indexes, the write
//! loop), [`lease`] (leader election), [`http`] + [`metrics`], [`grpc`] + [`auth`] (who agents are).

pub mod auth;
pub mod bounds;
pub mod conditions;
pub mod config;
pub mod crd;
pub mod grpc;
pub mod http;
pub mod inventory;
pub mod lease;
pub mod metrics;
pub mod reconcile;
pub mod runtime;

mod error;
pub use error::Error;
