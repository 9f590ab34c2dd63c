//! One SSH connection of our own (never the ControlMaster socket), tuned for
//! throughput, authenticated with every IdentityFile in turn.

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;

use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{ChannelId, client};
use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::client_config::{RekeyLimit, ResolvedHost};
use super::host_key::{HostKeyPolicy, HostKeyVerdict};
use crate::tunnel::channel_sink::{Buffered, Limits, Sinks};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot reach {target}: {source}")]
    Connect {
        target: String,
        source: russh::Error,
    },
    #[error("SSH handshake with {target} timed out after {timeout:?}")]
    Timeout { target: String, timeout: Duration },
    #[error("{0}")]
    HostKeyRefused(String),
    #[error(
        "{user}@{target}: no IdentityFile was accepted (tried: {tried}); \
         check IdentityFile in the ssh config"
    )]
    AuthFailed {
        user: String,
        target: String,
        tried: String,
    },
    #[error("SSH with {target}: {source}")]
    Protocol {
        target: String,
        source: russh::Error,
    },
}

impl SessionError {
    /// Nothing accepted the TCP connection (the VM is down or restarting),
    /// as opposed to a server that answered and failed the handshake.
    pub fn is_unreachable(&self) -> bool {
        match self {
            SessionError::Connect {
                source: russh::Error::IO(e),
                ..
            } => matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::NotConnected
                    | std::io::ErrorKind::AddrNotAvailable
            ),
            _ => false,
        }
    }
}

/// SSH-level tuning.
#[derive(Debug, Clone)]
pub struct SessionTuning {
    pub keepalive_interval: Duration,
    pub keepalive_count_max: u32,
    pub handshake_timeout: Duration,
    /// Bounds on data queued for clients that read slower than it arrives.
    pub limits: Limits,
    /// Agent-wide count of such data, shared by every session.
    pub buffered: Arc<Buffered>,
    /// Run a no-op command once per session so that sshd turns on
    /// TCP_NODELAY (see `ssh::nodelay`).
    pub sshd_tcp_nodelay: bool,
}

/// Most bytes of a server's disconnect message that are logged: it comes
/// from outside, and is escaped (`{:?}`) as well as cut.
const MAX_DISCONNECT_MESSAGE: usize = 200;

/// A live session and a future that completes when it ends.
pub struct Session {
    pub handle: client::Handle<TunnelHandler>,
    /// Where the session delivers each channel's data.
    pub sinks: Arc<Sinks>,
    /// Resolves when the session ends: with why, when russh told us (an
    /// error, or the server's SSH_MSG_DISCONNECT); closed without a value
    /// if the session task ended otherwise.
    pub closed: oneshot::Receiver<String>,
}

/// russh's per-session callbacks: host key checking, channel data straight
/// to the forwarded clients, and a drop guard that tells the pool the session
/// is gone (the handler lives exactly as long as the session task).
pub struct TunnelHandler {
    policy: HostKeyPolicy,
    refusal: Arc<Mutex<Option<String>>>,
    sinks: Arc<Sinks>,
    closed: Option<oneshot::Sender<String>>,
}

impl Drop for TunnelHandler {
    fn drop(&mut self) {
        self.sinks.finish_all();
    }
}

impl client::Handler for TunnelHandler {
    type Error = russh::Error;

    /// The data shares russh's decrypted packet (vendor/russh: no copy);
    /// the sink stages it until the session reads the socket again.
    async fn data_bytes(
        &mut self,
        channel: ChannelId,
        data: Bytes,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        self.sinks.deliver(channel, data).await;
        Ok(())
    }

    /// Why the session ended, for the pool's log: russh calls this once,
    /// as the session task ends.
    async fn disconnected(
        &mut self,
        reason: client::DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        let why = match &reason {
            client::DisconnectReason::ReceivedDisconnect(info) => format!(
                "the server disconnected ({:?}: {:?})",
                info.reason_code,
                portplane_core::text::truncate(&info.message, MAX_DISCONNECT_MESSAGE)
            ),
            client::DisconnectReason::Error(e) => e.to_string(),
        };
        if let Some(closed) = self.closed.take() {
            let _ = closed.send(why);
        }
        match reason {
            client::DisconnectReason::ReceivedDisconnect(_) => Ok(()),
            client::DisconnectReason::Error(e) => Err(e),
        }
    }

    async fn channel_open_confirmation(
        &mut self,
        channel: ChannelId,
        _max_packet_size: u32,
        _window_size: u32,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        self.sinks.open(channel);
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        self.sinks.finish(channel);
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        self.sinks.finish(channel);
        Ok(())
    }

    async fn check_server_key(
        &mut self,
        server_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let verdict = match server_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                // Reads the known hosts files, and may append (and fsync) a
                // new key: off the runtime's worker threads, which carry
                // the forwarded connections.
                let (policy, key) = (self.policy.clone(), key.clone());
                tokio::task::spawn_blocking(move || policy.check(&key))
                    .await
                    .unwrap_or_else(|e| {
                        HostKeyVerdict::Refuse(format!("host key check failed: {e}"))
                    })
            }
            PublicKeyOrCertificate::Certificate(_) => {
                HostKeyVerdict::Refuse("host certificates are not supported".into())
            }
        };
        match verdict {
            HostKeyVerdict::Accept => Ok(true),
            HostKeyVerdict::Refuse(reason) => {
                if let Ok(mut slot) = self.refusal.lock() {
                    *slot = Some(reason);
                }
                Ok(false)
            }
        }
    }
}

/// Cipher names russh supports, in our default order: AES-GCM first when the
/// CPU has AES instructions (several times faster than ChaCha20 there).
pub fn supported_ciphers() -> Vec<String> {
    let gcm = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"];
    let chacha = ["chacha20-poly1305@openssh.com"];
    let ctr = ["aes256-ctr", "aes192-ctr", "aes128-ctr"];
    let order: Vec<&str> = if cpu_has_aes() {
        gcm.iter().chain(&chacha).chain(&ctr).copied().collect()
    } else {
        chacha.iter().chain(&gcm).chain(&ctr).copied().collect()
    };
    order.into_iter().map(String::from).collect()
}

fn cpu_has_aes() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// Read-ahead on the SSH socket: a few of the largest packets.
const READ_AHEAD: usize = 256 * 1024;

/// The SSH socket as russh sees it. russh reads each packet with two exact
/// reads (length, then body); the read-ahead buffer turns that into one read
/// syscall per [`READ_AHEAD`] bytes. What the packets decoded staged for
/// clients is written out ([`Sinks::flush_staged`]) when the socket has
/// nothing more to read (or fails, or ends), just before the session
/// waits, or once [`READ_AHEAD`] bytes were read since the last time: one
/// write per client per wake-up of the session, up to that bound (a
/// client's staged data is also written once it reaches `STAGE_LIMIT`).
/// Writes pass straight through.
struct SshSocket {
    inner: BufReader<TcpStream>,
    sinks: Arc<Sinks>,
    /// Bytes read from the socket since the last flush.
    unflushed: usize,
}

impl AsyncRead for SshSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.inner.buffer().is_empty() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        // The socket itself is read: if it has more, decode that too
        // before writing to clients, within READ_AHEAD (so that a client's
        // answer does not wait behind a long burst for another). Writing
        // out before every read instead cost 3-14% more of the agent's CPU
        // per GB with four streams, in two pairs of runs (BENCHMARKS.md,
        // issue 12, tenth run: small, but the same way in both).
        let filled = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        // The buffer was empty: what it holds now came from this read.
        let read = match polled {
            Poll::Ready(Ok(())) => buf.filled().len() - filled + this.inner.buffer().len(),
            _ => 0,
        };
        this.unflushed += read;
        if flush_due(read, this.unflushed) {
            this.sinks.flush_staged();
            this.unflushed = 0;
        }
        polled
    }
}

/// Whether staged data is written out after a read of the SSH socket that
/// took `read` bytes, `unflushed` bytes having been read since the last
/// write-out (this read included): when the read got nothing (it would
/// block, or the socket ended or failed) or [`READ_AHEAD`] is reached.
fn flush_due(read: usize, unflushed: usize) -> bool {
    read == 0 || unflushed >= READ_AHEAD
}

impl AsyncWrite for SshSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The russh client config: OpenSSH's flow control for a forwarded
/// connection, TCP_NODELAY for request/reply latency, and the cipher order
/// the ssh config resolved to.
///
/// The window and packet size are `ssh -L`'s (`CHAN_TCP_WINDOW_DEFAULT`,
/// 2 MiB, and `CHAN_TCP_PACKET_DEFAULT`, 32 KiB, in OpenSSH's channels.h),
/// and vendor/russh adjusts the window as OpenSSH does, once three packets
/// of it are used. sshd then sends at the pace the agent takes the data, in
/// packet-sized writes, instead of in bursts of half a window: under bbr the
/// kernel paced those bursts with a timer, and sshd spent 1.1-1.3x the CPU
/// per GB it spends on `ssh -L` (BENCHMARKS.md, issue 12). A 2 MiB window is
/// ample on the host-to-VM link (at 1 ms round trip it allows 16 Gbit/s).
pub fn client_config(host: &ResolvedHost, tuning: &SessionTuning) -> client::Config {
    let ciphers: Vec<russh::cipher::Name> = host
        .ciphers
        .iter()
        .filter_map(|c| russh::cipher::Name::try_from(c.as_str()).ok())
        .collect();
    client::Config {
        window_size: 2 * 1024 * 1024,
        maximum_packet_size: 32 * 1024,
        // Data is drained promptly by each connection's own task, so this
        // only smooths bursts (see tunnel::connection).
        channel_buffer_size: 64,
        keepalive_interval: Some(tuning.keepalive_interval),
        keepalive_max: tuning.keepalive_count_max as usize,
        limits: rekey_limits(host.rekey_limit),
        preferred: russh::Preferred {
            cipher: Cow::Owned(ciphers),
            ..russh::Preferred::DEFAULT
        },
        ..client::Config::default()
    }
}

/// `RekeyLimit` as russh's limits. russh allows at most 1 GiB under one
/// key (`Limits::new` asserts it, for nonce safety): a larger amount is
/// lowered to that, which only renews keys sooner.
fn rekey_limits(limit: RekeyLimit) -> russh::Limits {
    const MOST: u64 = 1 << 30;
    let default = russh::Limits::default();
    let data = limit
        .data
        .and_then(|d| usize::try_from(d.min(MOST)).ok())
        .unwrap_or(default.rekey_write_limit);
    russh::Limits::new(data, data, limit.time.unwrap_or(default.rekey_time_limit))
}

/// Connect, check the host key, authenticate.
pub async fn connect(host: &ResolvedHost, tuning: &SessionTuning) -> Result<Session, SessionError> {
    let target = format!("{}:{} ({})", host.hostname, host.port, host.alias);
    let work = connect_inner(host, tuning, &target);
    match tokio::time::timeout(tuning.handshake_timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(SessionError::Timeout {
            target,
            timeout: tuning.handshake_timeout,
        }),
    }
}

async fn connect_inner(
    host: &ResolvedHost,
    tuning: &SessionTuning,
    target: &str,
) -> Result<Session, SessionError> {
    crate::mem::keep_packet_heap();
    let (closed_tx, closed) = oneshot::channel();
    let refusal = Arc::new(Mutex::new(None));
    let sinks = Arc::new(Sinks::new(tuning.limits.clone(), tuning.buffered.clone()));
    let mut handler = TunnelHandler {
        policy: HostKeyPolicy {
            host: host.hostname.clone(),
            port: host.port,
            known_hosts_files: host.user_known_hosts_files.clone(),
            strict: host.strict_host_key_checking,
            no_host_authentication_for_localhost: host.no_host_authentication_for_localhost,
            loopback_peer: false,
        },
        refusal: refusal.clone(),
        sinks: sinks.clone(),
        closed: Some(closed_tx),
    };
    let config = Arc::new(client_config(host, tuning));
    let connected = match tokio::net::TcpStream::connect((host.hostname.as_str(), host.port)).await
    {
        Ok(socket) => {
            // OpenSSH decides "localhost" by the address it connected to.
            handler.policy.loopback_peer = socket.peer_addr().is_ok_and(|a| a.ip().is_loopback());
            let _ = socket.set_nodelay(true);
            let socket = SshSocket {
                inner: BufReader::with_capacity(READ_AHEAD, socket),
                sinks: sinks.clone(),
                unflushed: 0,
            };
            client::connect_stream(config, socket, handler).await
        }
        Err(e) => Err(russh::Error::IO(e)),
    };
    let mut handle = match connected {
        Ok(handle) => handle,
        Err(source) => {
            if let Some(reason) = refusal.lock().ok().and_then(|mut r| r.take()) {
                return Err(SessionError::HostKeyRefused(reason));
            }
            return Err(SessionError::Connect {
                target: target.into(),
                source,
            });
        }
    };
    let protocol = |source| SessionError::Protocol {
        target: target.into(),
        source,
    };
    let rsa_hash = handle
        .best_supported_rsa_hash()
        .await
        .map_err(protocol)?
        .flatten();
    let mut tried = Vec::new();
    for file in &host.identity_files {
        let key = match russh::keys::load_secret_key(file, None) {
            Ok(key) => key,
            Err(e) => {
                tried.push(format!("{} ({e})", file.display()));
                continue;
            }
        };
        let auth = handle
            .authenticate_publickey(
                host.user.clone(),
                PrivateKeyWithHashAlg::new(Arc::new(key), rsa_hash),
            )
            .await
            .map_err(protocol)?;
        if auth.success() {
            return Ok(Session {
                handle,
                sinks,
                closed,
            });
        }
        tried.push(format!("{} (refused)", file.display()));
    }
    Err(SessionError::AuthFailed {
        user: host.user.clone(),
        target: target.into(),
        tried: tried.join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::{READ_AHEAD, flush_due};

    #[test]
    fn staged_data_waits_for_more_reads_only_within_the_read_ahead() {
        // Nothing more to read: write out before the session waits.
        assert!(flush_due(0, 0));
        assert!(flush_due(0, 100_000));
        // More came: decode it too, unless a read-ahead's worth is pending.
        assert!(!flush_due(70_000, 70_000));
        assert!(!flush_due(70_000, READ_AHEAD - 1));
        assert!(flush_due(70_000, READ_AHEAD));
        assert!(flush_due(READ_AHEAD, READ_AHEAD));
    }
}
