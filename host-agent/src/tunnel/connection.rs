//! One forwarded TCP connection over a `direct-tcpip` channel.
//!
//! Server -> client: the session writes each packet straight to the client
//! socket (see `tunnel::channel_sink`, which also explains why we never read the
//! channel's own queue); this task only writes what had to be queued while
//! the client was slow. Client -> server: the same task reads the client and
//! sends channel data; what the client sent while the channel was being
//! opened is sent by the session itself on the confirmation (`read_early`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use russh::client::Msg;
use russh::{ChannelWriteHalf, EarlyData};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::listener::Counters;
use super::pool::{Pool, SshHandle};
use crate::config::Target;

/// What every forwarded connection opens its channel through: the pool of
/// SSH sessions, and how long a new connection waits for a live session
/// during an outage before it is closed.
pub struct PoolWithGrace {
    pub pool: Arc<Pool>,
    pub outage_grace: Duration,
}

const READ_CHUNK: usize = 64 * 1024;

/// Forward `client` to `target` through a pooled session.
///
/// However the connection ends (either side's EOF, the client reset or cut
/// off for leaving too much unread, the session lost, the task dropped at
/// shutdown) the channel is closed (CHANNEL_CLOSE, so the server closes its
/// side too) and its sink and budget are given back (dropping the claim).
/// A connection cut short by the agent (the client cut off, or the session
/// lost before the server ended the stream) is reset, not closed with an
/// EOF. Bytes each way are added to `counters`.
pub async fn forward(
    shared: Arc<PoolWithGrace>,
    client: TcpStream,
    peer: SocketAddr,
    target: Target,
    forward: String,
    counters: &Arc<Counters>,
) {
    let _ = client.set_nodelay(true);
    let (mut client_read, client_write) = client.into_split();
    // The client usually speaks first (a TLS ClientHello): read it while
    // the open is in flight, and the session sends it as it handles the
    // confirmation, without first waking this task (see `read_early`).
    let early_data = EarlyData::new();
    let mut early_end = None;
    // One buffer for both reads: the early data and what follows share
    // its allocation.
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut read_early_bytes = 0;
    let opened = {
        let opening = open_channel(&shared, &target, &forward, &early_data);
        tokio::pin!(opening);
        let reading = read_early(
            &mut client_read,
            &mut buf,
            &early_data,
            counters,
            &mut read_early_bytes,
        );
        tokio::pin!(reading);
        loop {
            tokio::select! {
                opened = &mut opening => break opened,
                end = &mut reading, if early_end.is_none() => early_end = Some(end),
            }
        }
    };
    let Some((session, channel)) = opened else {
        // Nothing reached the server. What the client sent, the agent has
        // read: close with a reset, as the kernel does for a socket closed
        // with unread data, not an EOF that looks like an answer.
        if read_early_bytes > 0 {
            reset_on_drop(client_write);
        }
        return;
    };
    // What the server's window could not take on the confirmation; sent
    // before anything read later.
    let unsent = early_data.take();
    let client_write = Arc::new(client_write);
    // Claimed before anything can await: data the server sent first is
    // already waiting in the sink.
    let sink = session.sinks.claim(channel.id(), client_write.clone());
    sink.count_received(counters.bytes_to_clients.clone());
    // Every packet also goes to the channel's own queue; dropping its read
    // half makes those sends fail at once instead of filling it.
    let (from_server, to_server) = channel.split();
    drop(from_server);
    // From here on, leaving this function in any way closes the channel.
    let to_server = CloseOnDrop::new(to_server);

    // Both directions are polled by this one task: a second task per
    // connection was one more wake-up on the connect path (the client's
    // first bytes waited for it to be scheduled, at times on another
    // worker thread).
    // Boxed so that it can be dropped, not just left unpolled, before the
    // close below: a send it has pending (data or EOF, waiting for room in
    // the session's queue of 10) holds on to the room it is granted until
    // it is polled or dropped. Left pinned on the stack and unpolled while
    // this task awaits its own CHANNEL_CLOSE, it kept that room for ever;
    // after a burst of such connections (a session paused for stalled
    // readers while early-closing servers ended theirs) no message,
    // channel opens included, reached that session again.
    let mut upstream = Box::pin(client_to_server(
        client_read,
        buf,
        unsent,
        early_end,
        to_server.half.clone(),
        counters.clone(),
    ));
    let mut upstream_ended = false;
    let outcome = {
        let downstream = sink.write_queued_to(&client_write);
        tokio::pin!(downstream);
        loop {
            tokio::select! {
                outcome = &mut downstream => break outcome,
                ended = &mut upstream, if !upstream_ended => {
                    upstream_ended = true;
                    // Nothing will read what the server still sends, and
                    // the server need not close on EOF: end the connection
                    // now.
                    if ended == Upstream::ClientReset {
                        break Ok(());
                    }
                }
            }
        }
    };
    // The sink held the other reference to the client's write half: from
    // here ours is the only one, and dropping it shuts that side (EOF).
    drop(sink);
    match outcome {
        // Cut short (the client left too much unread, or the session was
        // lost before the server ended the stream): reset, so the client
        // sees an error, not an EOF that would pass a cut stream off as
        // whole. The reset goes out when the read half is dropped below.
        Err(why) => {
            tracing::warn!(forward, %peer, "resetting connection: {why}");
            reset_on_close(client_write);
        }
        // Whatever the client still sends has nowhere to go once the server
        // side closed; give the upstream a moment to deliver its EOF.
        Ok(()) if !upstream_ended => {
            drop(client_write);
            let _ = tokio::time::timeout(Duration::from_secs(1), &mut upstream).await;
        }
        Ok(()) => drop(client_write),
    }
    // Before the close, which needs room in the session's queue itself.
    drop(upstream);
    to_server.close().await;
}

/// Arrange for the client's socket to close with a reset (RST) rather
/// than a FIN: no linger, and no shutdown of the write half, which would
/// send a FIN first. The socket closes when the read half is dropped too.
/// With no linger, what the socket had not sent yet is dropped: a client
/// far behind loses that tail, and sees the reset either way.
fn reset_on_close(client_write: Arc<OwnedWriteHalf>) {
    // The sink's reference is gone once its claim is dropped (it never
    // keeps a copy past its lock); if one were left, dropping ours closes
    // the connection the usual way.
    match Arc::try_unwrap(client_write) {
        Ok(write) => reset_on_drop(write),
        Err(_) => tracing::debug!("client write half still shared; closing with an EOF"),
    }
}

/// No linger, and the write half forgotten rather than dropped (dropping
/// it shuts it down, a FIN): the socket closes with a reset when its read
/// half is dropped.
fn reset_on_drop(write: OwnedWriteHalf) {
    let _ = write.as_ref().set_zero_linger();
    write.forget();
}

/// Sends CHANNEL_CLOSE when dropped. russh's split write half has no
/// close-on-drop: without this, a connection task that ends early (a
/// stalled client cut off, an abort) left the channel open at the server,
/// which kept its connection to the target and kept sending.
struct CloseOnDrop {
    half: Arc<ChannelWriteHalf<Msg>>,
    /// Cleared by `close`, which has sent CHANNEL_CLOSE itself.
    armed: bool,
}

impl CloseOnDrop {
    fn new(half: ChannelWriteHalf<Msg>) -> CloseOnDrop {
        CloseOnDrop {
            half: Arc::new(half),
            armed: true,
        }
    }

    /// Close from the connection's own task: the usual end, without the
    /// extra task that closing from `drop` needs.
    async fn close(mut self) {
        // A channel the server closed already is forgotten by russh, which
        // then sends nothing.
        let _ = self.half.close().await;
        // Not before: a task dropped during the send still closes on drop.
        self.armed = false;
    }
}

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let half = self.half.clone();
        // No runtime: the process is exiting, and the socket with it.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = half.close().await;
            });
        }
    }
}

/// How the client-to-server direction ended.
#[derive(Debug, PartialEq, Eq)]
enum Upstream {
    /// The client sent EOF (passed on as CHANNEL_EOF) or the channel is gone.
    Ended,
    /// Reading the client failed (a reset).
    ClientReset,
}

/// How reading the client while the channel was being opened ended.
#[derive(Debug)]
enum Early {
    /// `READ_CHUNK` bytes are queued: the rest waits for the channel.
    Full,
    /// Read after the confirmation: to be sent first through the channel.
    Late(Bytes),
    Eof,
    Reset,
}

/// Read the client into `early_data` until the channel is confirmed: at
/// most `READ_CHUNK` bytes, what one read would take anyway, so a waiting
/// connection holds no more than its usual buffer (`queued` counts them).
/// Dropped between reads when the open completes first: everything read
/// is queued or returned by then (`read_buf` is cancel-safe).
async fn read_early(
    client_read: &mut OwnedReadHalf,
    buf: &mut BytesMut,
    early_data: &EarlyData,
    counters: &Counters,
    queued: &mut usize,
) -> Early {
    while *queued < READ_CHUNK {
        buf.reserve(READ_CHUNK - *queued);
        match client_read.read_buf(buf).await {
            Ok(0) => return Early::Eof,
            Err(_) => return Early::Reset,
            Ok(n) => {
                *queued += n;
                counters
                    .bytes_from_clients
                    .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                if let Err(late) = early_data.push(buf.split().freeze()) {
                    return Early::Late(late);
                }
            }
        }
    }
    Early::Full
}

/// Client to server: first what the session left of the early data
/// (`unsent`) and how the early read ended (if it did), then the client
/// read until its EOF, passed on as CHANNEL_EOF.
async fn client_to_server(
    mut client_read: OwnedReadHalf,
    mut buf: BytesMut,
    unsent: Vec<Bytes>,
    early_end: Option<Early>,
    to_server: Arc<ChannelWriteHalf<Msg>>,
    counters: Arc<Counters>,
) -> Upstream {
    for data in unsent {
        if to_server.data_bytes(data).await.is_err() {
            return Upstream::Ended;
        }
    }
    match early_end {
        Some(Early::Late(data)) => {
            if to_server.data_bytes(data).await.is_err() {
                return Upstream::Ended;
            }
        }
        Some(Early::Eof) => {
            let _ = to_server.eof().await;
            return Upstream::Ended;
        }
        Some(Early::Reset) => return Upstream::ClientReset,
        Some(Early::Full) | None => {}
    }
    loop {
        buf.reserve(READ_CHUNK);
        match client_read.read_buf(&mut buf).await {
            Ok(0) => {
                let _ = to_server.eof().await;
                return Upstream::Ended;
            }
            Err(_) => return Upstream::ClientReset,
            Ok(n) => {
                counters
                    .bytes_from_clients
                    .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                if to_server.data_bytes(buf.split().freeze()).await.is_err() {
                    return Upstream::Ended;
                }
            }
        }
    }
}

/// Open the channel on a live session, retrying on the next one while the
/// outage grace lasts. What the client sent meanwhile is in `early_data`,
/// which goes with each attempt until a session takes it.
async fn open_channel(
    shared: &PoolWithGrace,
    target: &Target,
    forward: &str,
    early_data: &EarlyData,
) -> Option<(SshHandle, russh::Channel<russh::client::Msg>)> {
    let deadline = tokio::time::Instant::now() + shared.outage_grace;
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(session) = shared.pool.session(remaining).await else {
            tracing::warn!(
                forward,
                grace = ?shared.outage_grace,
                "no ssh session within the outage grace; closing the client connection"
            );
            return None;
        };
        match session
            .handle
            .channel_open_direct_tcpip_with_early_data(
                target.host.clone(),
                u32::from(target.port),
                "127.0.0.1",
                0,
                early_data.clone(),
            )
            .await
        {
            Ok(channel) => return Some((session, channel)),
            Err(russh::Error::ChannelOpenFailure(reason)) => {
                tracing::warn!(forward, %target, ?reason, "the ssh server could not reach the target");
                return None;
            }
            // The session ended as it took the client's first bytes: they
            // are lost, and the stream cannot be resumed elsewhere.
            Err(error) if early_data.is_closed() => {
                tracing::warn!(forward, %error, "ssh session lost while opening the channel; closing the client connection");
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
