//! portplane-agent: the operator tunnel, the kubeconfig/talosconfig
//! rewrites, and the ownership rule (only operator ports are tunneled).

pub mod config;
pub mod controller_link;
pub mod docker_ports;
pub mod enroll;
pub mod link_tls;
pub mod ownership;
pub mod rewrite;
pub mod run;
pub mod second_owners;
pub mod ssh;
pub mod token;
pub mod tunnel;
