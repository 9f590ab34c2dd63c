//! The only thing the controller and the host agents share on the wire.
//!
//! Generated at build time from `proto/portplane/v1alpha1/*.proto`.

pub mod v1alpha1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("portplane.v1alpha1");
}

pub mod convert;
