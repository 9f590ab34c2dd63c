use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// Data for a channel that is still being opened, sent by the session
/// itself the moment the server confirms the channel.
///
/// A port forwarder reads its client while the open is in flight (the
/// client usually speaks first: a TLS ClientHello, an HTTP request). Data
/// [`push`](EarlyData::push)ed before the confirmation goes out as
/// `SSH_MSG_CHANNEL_DATA` while the session processes the
/// `SSH_MSG_CHANNEL_OPEN_CONFIRMATION`, in the same write, without first
/// handing the confirmation to the task that opened the channel and
/// waiting for that task to send it.
///
/// The session sends no more than the server's initial window; the rest
/// stays queued. Once the channel is confirmed (or refused) the value is
/// closed: `push` gives the data back, and the caller sends it through
/// the [`Channel`](crate::Channel) the open returns, after what
/// [`take`](EarlyData::take) returns (what did not fit the window).
///
/// The caller bounds what it pushes; nothing here limits it.
#[derive(Clone, Debug, Default)]
pub struct EarlyData {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    queued: VecDeque<Bytes>,
    closed: bool,
}

impl EarlyData {
    pub fn new() -> Self {
        Self::default()
    }

    /// Queue `data` for the confirmation; `Err(data)` once the channel is
    /// confirmed or refused (send it through the channel instead).
    pub fn push(&self, data: Bytes) -> Result<(), Bytes> {
        let Ok(mut state) = self.state.lock() else {
            return Err(data);
        };
        if state.closed {
            return Err(data);
        }
        state.queued.push_back(data);
        Ok(())
    }

    /// Whether the session took the data (or the open was refused). An open
    /// that failed because its session ended, with this still open, sent
    /// none of it: the same value can be passed to an open on another
    /// session.
    pub fn is_closed(&self) -> bool {
        self.state.lock().map_or(true, |state| state.closed)
    }

    /// Close, and return what was queued: later pushes fail. The caller
    /// calls it after the open returns, for what the session left (see
    /// [`take_within`](Self::take_within)), and sends that first.
    pub fn take(&self) -> Vec<Bytes> {
        match self.state.lock() {
            Ok(mut state) => {
                state.closed = true;
                Vec::from(std::mem::take(&mut state.queued))
            }
            // Only a panic while holding the lock poisons it, and no code
            // here panics; treat it as closed and empty.
            Err(_) => Vec::new(),
        }
    }

    /// Close, and return the first `limit` bytes queued, leaving the rest
    /// for [`take`](Self::take). The session calls it on the confirmation
    /// with the server's initial window, so that what it sends never waits
    /// in its own queue (where it would hold up every channel's sends).
    pub(crate) fn take_within(&self, limit: usize) -> Vec<Bytes> {
        let Ok(mut state) = self.state.lock() else {
            return Vec::new();
        };
        state.closed = true;
        let mut taken = Vec::new();
        let mut room = limit;
        while room > 0 {
            let Some(first) = state.queued.front_mut() else {
                break;
            };
            if first.len() > room {
                taken.push(first.split_to(room));
                break;
            }
            room -= first.len();
            taken.extend(state.queued.pop_front());
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_until_taken_then_given_back() {
        let early = EarlyData::new();
        assert!(!early.is_closed());
        assert!(early.push(Bytes::from_static(b"a")).is_ok());
        assert!(early.push(Bytes::from_static(b"b")).is_ok());
        assert_eq!(
            early.take(),
            vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]
        );
        assert_eq!(
            early.push(Bytes::from_static(b"c")),
            Err(Bytes::from_static(b"c"))
        );
        assert!(early.is_closed());
        assert!(early.take().is_empty());
    }

    #[test]
    fn take_within_leaves_what_does_not_fit_for_the_caller() {
        let early = EarlyData::new();
        early.push(Bytes::from_static(b"abc")).unwrap();
        early.push(Bytes::from_static(b"defg")).unwrap();
        assert_eq!(
            early.take_within(5),
            vec![Bytes::from_static(b"abc"), Bytes::from_static(b"de")]
        );
        assert!(early.is_closed());
        assert_eq!(early.take(), vec![Bytes::from_static(b"fg")]);
        assert!(early.take_within(10).is_empty());
    }
}
