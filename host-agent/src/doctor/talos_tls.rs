//! The Talos API through the talos-api forward: a TLS handshake with the
//! talosconfig's CA (server verified) and client certificate, as talosctl
//! makes it. No Talos request is sent: the handshake proves the tunnel
//! reaches a TLS server whose certificate the talosconfig's CA signed. (Under
//! TLS 1.3 a server that refuses the client certificate says so only after
//! the handshake; `talosctl version` shows that case.)

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum TalosTlsError {
    #[error("talosconfig: {0}")]
    Config(String),
    #[error("cannot connect to {listen}: {source}")]
    Connect {
        listen: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS handshake through {listen} failed: {source}")]
    Handshake {
        listen: SocketAddr,
        source: std::io::Error,
    },
}

#[derive(Deserialize)]
struct Talosconfig {
    contexts: std::collections::BTreeMap<String, Context>,
}

#[derive(Deserialize)]
struct Context {
    ca: Option<String>,
    crt: Option<String>,
    key: Option<String>,
}

/// Handshake with `listen` using context `context` of the talosconfig `text`.
pub async fn handshake(text: &str, context: &str, listen: SocketAddr) -> Result<(), TalosTlsError> {
    let bad = |m: String| TalosTlsError::Config(m);
    let config: Talosconfig = serde_saphyr::from_str(text).map_err(|e| bad(e.to_string()))?;
    let ctx = config
        .contexts
        .get(context)
        .ok_or_else(|| bad(format!("no context \"{context}\"")))?;
    let field = |name: &str, v: &Option<String>| -> Result<Vec<u8>, TalosTlsError> {
        let v = v
            .as_deref()
            .ok_or_else(|| bad(format!("context \"{context}\" has no `{name}`")))?;
        base64::engine::general_purpose::STANDARD
            .decode(v.trim())
            .map_err(|e| {
                bad(format!(
                    "context \"{context}\": `{name}` is not base64: {e}"
                ))
            })
    };
    let (ca, crt, key) = (
        field("ca", &ctx.ca)?,
        field("crt", &ctx.crt)?,
        field("key", &ctx.key)?,
    );
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&ca) {
        let cert = cert.map_err(|e| bad(format!("`ca`: {e}")))?;
        roots.add(cert).map_err(|e| bad(format!("`ca`: {e}")))?;
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&crt)
        .collect::<Result<_, _>>()
        .map_err(|e| bad(format!("`crt`: {e}")))?;
    // talosctl labels its Ed25519 PKCS#8 keys "ED25519 PRIVATE KEY".
    let key = String::from_utf8_lossy(&key).replace("ED25519 PRIVATE KEY", "PRIVATE KEY");
    let key =
        PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| bad(format!("`key`: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| bad(format!("`crt`/`key`: {e}")))?;
    let stream = tokio::net::TcpStream::connect(listen)
        .await
        .map_err(|source| TalosTlsError::Connect { listen, source })?;
    let name = ServerName::IpAddress(listen.ip().into());
    let mut tls_stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, stream)
        .await
        .map_err(|source| TalosTlsError::Handshake { listen, source })?;
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls_stream).await;
    Ok(())
}
