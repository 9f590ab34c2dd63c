//! portplane-agent: the operator tunnel, the kubeconfig/talosconfig
//! rewrites, and the ownership rule (only operator ports are tunneled).

pub mod backoff;
pub mod config;
pub mod controller_link;
pub mod docker_ports;
pub mod doctor;
pub mod enroll;
pub mod link_tls;
pub mod mem;
pub mod ownership;
pub mod rewrite;
pub mod run;
pub mod second_owners;
pub mod service;
pub mod ssh;
pub mod status;
pub mod token;
pub mod tunnel;
