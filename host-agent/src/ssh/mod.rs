//! The SSH side: reading the OpenSSH client config, checking host keys, and
//! opening our own tuned session.

pub mod client_config;
pub mod host_key;
mod rekey_limit;
pub mod session;
