//! Asking sshd to send small packets at once (TCP_NODELAY).
//!
//! sshd turns TCP_NODELAY on for a connection only once one of its session
//! channels runs a command or a shell: `ssh_packet_set_interactive` in
//! OpenSSH's packet.c, called from `do_exec_pty` and `do_exec_no_pty` in
//! session.c. A connection that only forwards ports (`ssh -N -L`, and the
//! agent until it runs one) keeps Nagle's algorithm, so each small packet
//! sshd sends waits for the ACK of the one before, and the receiving kernel
//! delays that ACK (Linux by at least 40 ms). Request/reply traffic such as
//! a TLS handshake then stalls: new Kubernetes connections through one
//! session took 88 ms at p99, against 4-7 ms once sshd had TCP_NODELAY
//! (BENCHMARKS.md, issue 12). The fix is on the server's side, so it works
//! for a host whose own kernel cannot be told to ACK at once (macOS has no
//! `TCP_QUICKACK`).
//!
//! The same call makes sshd mark its packets with `IPQoS`' class for
//! non-interactive sessions (`cs1` by default from OpenSSH 7.8 on, as in
//! Debian 12's 9.2), which only a network that honours DSCP acts on
//! (Wi-Fi's WMM puts CS1 in its background queue); loopback and a VM's
//! virtual link do not.

use std::time::Duration;

use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf, client};

use super::session::TunnelHandler;
use crate::tunnel::channel_sink::Sinks;

/// The command: the POSIX no-op, run by the user's shell on the server
/// (`$SHELL -c`, as sshd runs every command). A `ForceCommand`
/// (sshd_config) or `command=` (authorized_keys) runs instead; sshd sets
/// TCP_NODELAY either way.
const COMMAND: &str = "true";

/// How long sshd may take to answer the request.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the command may run before its channel is closed anyway (a
/// forced command that never ends by itself).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// What a session without TCP_NODELAY at sshd costs, for the agent's log
/// and `doctor`.
pub const WITHOUT_IT: &str = "sshd keeps Nagle's algorithm on this session, \
     and request/reply traffic such as a TLS handshake may stall 40-90 ms";

/// What sshd made of the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// sshd started it: the connection now has TCP_NODELAY.
    Started,
    /// sshd refused to run it: Nagle stays on.
    Refused,
    /// No answer within [`REPLY_TIMEOUT`].
    NoAnswer,
}

/// Why the request could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NodelayError {
    /// With OpenSSH, `MaxSessions 0` refuses session channels (forwarding
    /// still works).
    #[error("could not open a session channel: {0} (sshd refuses them with `MaxSessions 0`)")]
    Channel(#[source] russh::Error),
    #[error("could not ask sshd to run `true`: {0}")]
    Exec(#[source] russh::Error),
}

/// Open a session channel, ask sshd to run [`COMMAND`] in it, and return
/// sshd's answer (or [`Outcome::NoAnswer`] after [`REPLY_TIMEOUT`]).
///
/// sshd turns TCP_NODELAY on before it answers (`do_exec_no_pty` calls
/// `ssh_packet_set_interactive`, then the reply goes out), so nothing waits
/// for the command itself. It is left to end on its own, in the background:
/// its stdin gets EOF at once, and the channel is closed only once sshd
/// closes it, or after [`COMMAND_TIMEOUT`]. Cutting it short would kill the
/// user's shell while it reads its rc files (in testing this left
/// pyenv's rehash lock behind, and every later shell waited on it).
/// Whatever the command prints is read and dropped (`Sinks::ignore`), so
/// it never holds up the session.
pub async fn request(
    handle: &client::Handle<TunnelHandler>,
    sinks: &Sinks,
) -> Result<Outcome, NodelayError> {
    let channel = handle
        .channel_open_session()
        .await
        .map_err(NodelayError::Channel)?;
    // Not a forwarded connection: no sink keeps its output.
    sinks.ignore(channel.id());
    let (mut read, write) = channel.split();
    if let Err(e) = write.exec(true, COMMAND).await {
        drop(read);
        let _ = write.close().await;
        return Err(NodelayError::Exec(e));
    }
    let _ = write.eof().await;
    let outcome = tokio::time::timeout(REPLY_TIMEOUT, async {
        while let Some(msg) = read.wait().await {
            match msg {
                ChannelMsg::Success => return Outcome::Started,
                ChannelMsg::Failure => return Outcome::Refused,
                // Output of a command that started before the reply was
                // read here.
                _ => {}
            }
        }
        Outcome::NoAnswer
    })
    .await
    .unwrap_or(Outcome::NoAnswer);
    tokio::spawn(finish(read, write, outcome == Outcome::Started));
    Ok(outcome)
}

/// Read the channel until sshd closes it (the command exited) or the
/// session ends; close it ourselves after [`COMMAND_TIMEOUT`], or at once
/// when no command runs in it.
async fn finish(mut read: ChannelReadHalf, write: ChannelWriteHalf<client::Msg>, running: bool) {
    let ended = running
        && tokio::time::timeout(COMMAND_TIMEOUT, async {
            while let Some(msg) = read.wait().await {
                if matches!(msg, ChannelMsg::Close) {
                    return;
                }
            }
        })
        .await
        .is_ok();
    // russh puts a channel's messages in its queue and waits for room: no
    // one reads it from here on, so it goes before the close is sent.
    drop(read);
    if !ended {
        let _ = write.close().await;
    }
}
