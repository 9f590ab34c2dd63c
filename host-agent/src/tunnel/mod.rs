//! The operator tunnel: loopback listeners, a pool of SSH sessions, and one
//! `direct-tcpip` channel per forwarded connection.

pub mod channel_sink;
pub mod connection;
pub mod listener;
pub mod pool;
pub mod port_holder;
