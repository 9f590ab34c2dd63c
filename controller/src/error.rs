use std::path::PathBuf;

/// Every error the controller reports.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read controller config {path}: {source}")]
    ConfigRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("controller config {path}: {message}")]
    Config { path: PathBuf, message: String },
    /// A config built in code rather than loaded (validated) from a file.
    #[error("controller config: {0}")]
    InvalidConfig(String),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC TLS: {path}: {message}")]
    Tls { path: PathBuf, message: String },
    #[error("{0}")]
    Plaintext(String),
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("stopped writing: the lease ran out before the writes finished")]
    LeaseExpired,
}
