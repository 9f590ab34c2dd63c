//! The SSH side: reading the OpenSSH client config, checking host keys, and
//! opening our own tuned session, and asking sshd for TCP_NODELAY.

pub mod client_config;
pub mod host_key;
pub mod nodelay;
mod rekey_limit;
pub mod session;
