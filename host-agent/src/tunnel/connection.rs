//! One forwarded TCP connection over a `direct-tcpip` channel.
//!
//! russh's session task pushes each channel's incoming data into a bounded
//! per-channel queue and *awaits* when it is full, which would stall every
//! channel of the session, keepalives included, behind one client that
//! stopped reading. So a dedicated task per connection always drains the
//! channel at once into its own buffer, and a second task writes that buffer
//! to the client. russh 0.65 grants window on receipt (not on consumption),
//! so the buffer cannot push back through the SSH window; it is bounded
//! instead: a connection whose client leaves more than
//! [`Limits::per_connection`] unread (or would push the agent past
//! [`Limits::total`]) is closed rather than allowed to stall or bloat the rest.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use russh::ChannelMsg;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

use super::pool::{Pool, SshHandle};
use crate::config::Target;

/// Memory bounds for data the server sent that clients have not read yet.
#[derive(Debug, Clone)]
pub struct Limits {
    pub per_connection: usize,
    pub total: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // Twice the SSH window: a reader pausing for a moment is fine.
            per_connection: 16 * 1024 * 1024,
            total: 256 * 1024 * 1024,
        }
    }
}

/// Bytes buffered for clients, agent-wide.
#[derive(Debug, Default)]
pub struct Buffered(AtomicUsize);

impl Buffered {
    fn try_add(&self, n: usize, cap: usize) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                (cur + n <= cap).then_some(cur + n)
            })
            .is_ok()
    }
    fn sub(&self, n: usize) {
        self.0.fetch_sub(n, Ordering::AcqRel);
    }
}

pub struct Shared {
    pub pool: Arc<Pool>,
    pub outage_grace: Duration,
    pub limits: Limits,
    pub buffered: Buffered,
}

const READ_CHUNK: usize = 64 * 1024;

/// Forward `client` to `target` through a pooled session.
pub async fn forward(shared: Arc<Shared>, client: TcpStream, target: Target, forward: String) {
    let peer = client.peer_addr().ok();
    let _ = client.set_nodelay(true);
    let Some(channel) = open_channel(&shared, &target, &forward).await else {
        return;
    };
    let (mut from_server, to_server) = channel.split();
    let (mut client_read, client_write) = client.into_split();
    // Shared by the drain (which writes directly while nothing is queued,
    // saving a task hop per packet) and the writer task; the last one to
    // drop it shuts the client's write side down.
    let client_write = Arc::new(client_write);
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();

    let mine = Arc::new(Buffered::default());
    let drain = {
        let (shared, mine, client_write) = (shared.clone(), mine.clone(), client_write.clone());
        async move {
            let result = drain_channel(&mut from_server, &client_write, &tx, &mine, &shared).await;
            drop(client_write);
            drop(tx);
            result
        }
    };
    let to_client = {
        let (shared, mine) = (shared.clone(), mine.clone());
        async move {
            while let Some(data) = rx.recv().await {
                let n = data.len();
                let written = write_all(&client_write, &data).await;
                mine.sub(n);
                shared.buffered.sub(n);
                written?;
            }
            Ok::<(), std::io::Error>(())
        }
    };
    let to_server_task = async move {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        loop {
            buf.reserve(READ_CHUNK);
            match client_read.read_buf(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = to_server.eof().await;
                    return to_server;
                }
                Ok(_) => {
                    if to_server.data_bytes(buf.split().freeze()).await.is_err() {
                        return to_server;
                    }
                }
            }
        }
    };

    let drain = tokio::spawn(drain);
    let to_client = tokio::spawn(to_client);
    let upstream = tokio::spawn(to_server_task);
    let abort_client = to_client.abort_handle();
    let abort_upstream = upstream.abort_handle();
    match drain.await {
        Ok(Err(why)) => {
            tracing::warn!(forward, ?peer, "closing connection: {why}");
            abort_client.abort();
            abort_upstream.abort();
        }
        _ => {
            // Server finished sending: let the client read the rest.
            let _ = to_client.await;
        }
    }
    // Whatever the client still sends has nowhere to go once the server
    // side closed; give the upstream a moment to deliver its EOF.
    if let Ok(Ok(to_server)) = tokio::time::timeout(Duration::from_secs(1), upstream).await {
        let _ = to_server.close().await;
    } else {
        abort_upstream.abort();
    }
    let left = mine.0.load(Ordering::Acquire);
    shared.buffered.sub(left);
}

/// Move the channel's data to the client without ever blocking on it: write
/// straight through while nothing is queued, queue (within the limits)
/// otherwise. `Err` names the limit a stalled client hit.
async fn drain_channel(
    from_server: &mut russh::ChannelReadHalf,
    client: &OwnedWriteHalf,
    queue: &mpsc::UnboundedSender<Bytes>,
    mine: &Buffered,
    shared: &Shared,
) -> Result<(), &'static str> {
    while let Some(msg) = from_server.wait().await {
        let mut data = match msg {
            ChannelMsg::Data { data } => data,
            ChannelMsg::Eof | ChannelMsg::Close => break,
            _ => continue,
        };
        if mine.0.load(Ordering::Acquire) == 0 {
            match client.try_write(&data) {
                Ok(n) if n == data.len() => continue,
                Ok(n) => data = data.slice(n..),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                // The client is gone; the channel closes with it.
                Err(_) => return Ok(()),
            }
        }
        let n = data.len();
        if !mine.try_add(n, shared.limits.per_connection) {
            return Err("the client left more than the per-connection buffer unread");
        }
        if !shared.buffered.try_add(n, shared.limits.total) {
            mine.sub(n);
            return Err("the agent's total buffer for unread data is full");
        }
        if queue.send(data).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

async fn write_all(client: &OwnedWriteHalf, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        client.writable().await?;
        match client.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn open_channel(
    shared: &Shared,
    target: &Target,
    forward: &str,
) -> Option<russh::Channel<russh::client::Msg>> {
    let deadline = tokio::time::Instant::now() + shared.outage_grace;
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(session): Option<SshHandle> = shared.pool.session(remaining).await else {
            tracing::warn!(
                forward,
                grace = ?shared.outage_grace,
                "no ssh session within the outage grace; closing the client connection"
            );
            return None;
        };
        match session
            .channel_open_direct_tcpip(target.host.clone(), u32::from(target.port), "127.0.0.1", 0)
            .await
        {
            Ok(channel) => return Some(channel),
            Err(russh::Error::ChannelOpenFailure(reason)) => {
                tracing::warn!(forward, %target, ?reason, "the ssh server could not reach the target");
                return None;
            }
            // The session died under us: wait for the next one.
            Err(error) => {
                tracing::debug!(forward, %error, "channel open failed; retrying on another session");
                tokio::time::sleep(Duration::from_millis(10)).await;
                if tokio::time::Instant::now() >= deadline {
                    return None;
                }
            }
        }
    }
}
