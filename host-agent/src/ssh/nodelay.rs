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
//! non-interactive sessions (`cs1` by default since OpenSSH 7.8), which
//! only a network that honours DSCP acts on (Wi-Fi's WMM puts CS1 in its
//! background queue); loopback and a VM's virtual link do not.

use std::time::Duration;

use russh::{ChannelMsg, client};

use super::session::TunnelHandler;
use crate::tunnel::channel_sink::Sinks;

/// The command: the POSIX no-op, run by the user's login shell on the
/// server. A `ForceCommand` (sshd_config) or `command=` (authorized_keys)
/// runs instead; sshd sets TCP_NODELAY either way.
pub const COMMAND: &str = "true";

/// How long the command may take to exit before its channel is closed
/// anyway (a forced command that waits for input never exits by itself).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// What sshd made of the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// sshd started it: the connection now has TCP_NODELAY.
    Started,
    /// sshd refused it (a server that allows no commands): Nagle stays on.
    Refused,
    /// No answer within [`COMMAND_TIMEOUT`].
    NoAnswer,
}

/// Open a session channel, run [`COMMAND`] in it and close it once the
/// command has exited (or after [`COMMAND_TIMEOUT`]). Whatever the command
/// prints (a login shell's greeting, say) is dropped. Errors are those of
/// russh opening the channel or sending the request.
pub async fn request(
    handle: &client::Handle<TunnelHandler>,
    sinks: &Sinks,
) -> Result<Outcome, russh::Error> {
    let mut channel = handle.channel_open_session().await?;
    // Not a forwarded connection: no sink keeps its output.
    sinks.ignore(channel.id());
    channel.exec(true, COMMAND).await?;
    let mut outcome = Outcome::NoAnswer;
    let closed = tokio::time::timeout(COMMAND_TIMEOUT, async {
        // Read every message, so that russh never waits on this channel's
        // queue, until sshd closes the channel (after the exit status).
        while let Some(msg) = channel.wait().await {
            match msg {
                ChannelMsg::Success => outcome = Outcome::Started,
                ChannelMsg::Failure => {
                    outcome = Outcome::Refused;
                    return false;
                }
                ChannelMsg::Close => return true,
                _ => {}
            }
        }
        true
    })
    .await;
    if closed != Ok(true) {
        let _ = channel.close().await;
    }
    Ok(outcome)
}
