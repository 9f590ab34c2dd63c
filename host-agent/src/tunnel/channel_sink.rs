//! Where a session delivers each channel's incoming data: straight into the
//! forwarded client's socket, from russh's session task, without blocking.
//!
//! russh hands every CHANNEL_DATA packet both to the channel's bounded queue
//! (awaiting when it is full, which would stall every channel of the session,
//! keepalives included, behind one client that stopped reading) and to the
//! `Handler::data_bytes` callback. We use only the callback. While nothing is
//! queued for a client, its packets' data is *staged* (the `Bytes` russh
//! hands over share the decrypted packet: no copy) and written with one
//! non-blocking `writev` once the SSH socket has nothing more to read, or
//! a read-ahead's worth (256 KiB) was read since the last write-out
//! ([`Sinks::flush_staged`], called by `ssh::session`'s socket wrapper):
//! one write per client per wake-up of the session, instead of one per
//! packet, and no task hop per packet (which is
//! what made the agent slower than `ssh -L`). What the client's socket does
//! not take goes to a queue that the connection's writer task empties.
//! Staged data is bounded by [`STAGE_LIMIT`] per client (a flush comes
//! sooner if it is reached). The queue is bounded per connection and
//! agent-wide: russh 0.65 grants window on receipt (russh#770), so it cannot
//! push back through the SSH window per channel. Instead:
//! - a *slow* reader gets back-pressure: once its queue passes
//!   [`Limits::pause_above`], the session stops reading until the queue has
//!   drained to half of that, as often and as long as the transfer lasts,
//!   provided each drain takes less than [`Limits::pause_budget`] or the
//!   client reads a fair part of its queue meanwhile (the other connections
//!   of the session move at its pace meanwhile: the price of russh granting
//!   window on receipt);
//! - a *stalled* reader is one that reads (next to) nothing within the
//!   budget: the session waits for it that long once (others wait at most
//!   that long, far below the keepalive timeout), then no more until it has
//!   caught up completely; meanwhile its data queues up to [`Limits::per_connection`]
//!   and then it is disconnected, instead of stalling or bloating the rest;
//! - the session as a whole waits for stalled readers at most
//!   [`Limits::stall_allowance`] per [`Limits::stall_window`]: a burst of
//!   clients that all stop reading (a hundred paused pagers) would otherwise
//!   hold the session for a budget each, back to back, starving every other
//!   connection on it. Past the allowance a client that has not read
//!   within the last budget gets no pause; it queues up to its limit and is
//!   cut. Only waits in which the client read (next to) nothing count
//!   against the allowance (a trickle counts as stalled), and a client that
//!   is reading is still paused past it (in waits a quarter of the budget),
//!   so stalled readers cannot take back-pressure away from readers: a
//!   loaded machine makes a reader slow, not cut;
//! - a client that is reading is never cut because stalled ones filled the
//!   agent-wide budget: it is paused at `pause_above` instead.
//!
//! Data can arrive before the connection task learns its channel id (a server
//! that speaks first); it waits in an unclaimed sink until claimed. Past
//! `pause_above` the session pauses for the claim as for a slow reader: the
//! connection is new, so it counts as reading (one wait on credit, even past
//! the allowance and with the agent-wide budget full); it is stalled only
//! if no claim and no drain come within the budget.
//!
//! A sink exists only between the server's confirmation of its channel
//! ([`Sinks::open`]) and the end of its claim: data for any other channel
//! id (one whose connection has ended, while the CHANNEL_CLOSE is still on
//! its way) is dropped, never stored, so it can neither hold memory nor
//! count against the agent-wide budget.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::io::IoSlice;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Buf, Bytes};
use russh::ChannelId;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;

/// When stalled readers have used the session's allowance, a reading client
/// is still paused, for at most `pause_budget / PROBE_DIVISOR` at a time.
const PROBE_DIVISOR: u32 = 4;

/// A client with more than `pause_above / BEHIND_DIVISOR` queued puts its
/// session [`Sinks::behind`].
const BEHIND_DIVISOR: usize = 4;

/// A wait in which the client read at least `pause_above / MIN_PROGRESS_DIVISOR`
/// (128 KiB with the defaults) shows a reader, not a stalled client.
const MIN_PROGRESS_DIVISOR: usize = 8;

/// Most bytes staged for one client before they are written without waiting
/// for the session's next read of the SSH socket: the session's read-ahead
/// (`ssh::session`), i.e. what one read can decrypt.
pub const STAGE_LIMIT: usize = 256 * 1024;

/// Memory bounds for data the server sent that clients have not read yet.
/// Queues up to `pause_above` are always accepted, and so are larger ones
/// of a client that read within the last `pause_budget` or has not been
/// written to yet (it is paused at `pause_above`, so its queue stays near
/// that); other queues grow only within `total`. No queue passes
/// `per_connection`.
#[derive(Debug, Clone)]
pub struct Limits {
    pub per_connection: usize,
    pub total: usize,
    /// Queue size past which the session pauses for this client.
    pub pause_above: usize,
    /// Longest the session waits for a client to drain to half of
    /// `pause_above`; a client that takes longer counts as stalled.
    pub pause_budget: Duration,
    /// Longest the session waits, in all, for readers that then did not
    /// drain, per `stall_window`.
    pub stall_allowance: Duration,
    pub stall_window: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // Eight SSH windows (2 MiB, ssh::session): a reader pausing
            // for a moment is fine.
            per_connection: 16 * 1024 * 1024,
            total: 256 * 1024 * 1024,
            pause_above: 1024 * 1024,
            pause_budget: Duration::from_secs(1),
            // At most a fifth of the session's time goes to stalled readers.
            stall_allowance: Duration::from_secs(2),
            stall_window: Duration::from_secs(10),
        }
    }
}

/// Bytes queued for clients, agent-wide (shared by every session).
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
    fn add(&self, n: usize) {
        self.0.fetch_add(n, Ordering::AcqRel);
    }
    fn sub(&self, n: usize) {
        self.0.fetch_sub(n, Ordering::AcqRel);
    }
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// One session's sinks, by channel (generic over the id so tests can name
/// channels; russh's `ChannelId` cannot be built outside russh). Lock order:
/// the map, then a sink's state.
pub struct Sinks<K = ChannelId> {
    by_channel: Mutex<HashMap<K, Arc<Sink>>>,
    limits: Limits,
    total: Arc<Buffered>,
    /// Waits spent on readers that did not drain: (window start, spent).
    stalls: Mutex<(tokio::time::Instant, Duration)>,
    /// Sinks with staged data, to write at the next flush.
    dirty: Mutex<Vec<Arc<Sink>>>,
}

impl<K: Copy + Eq + Hash> Sinks<K> {
    pub fn new(limits: Limits, total: Arc<Buffered>) -> Sinks<K> {
        Sinks {
            by_channel: Mutex::new(HashMap::new()),
            limits,
            total,
            stalls: Mutex::new((tokio::time::Instant::now(), Duration::ZERO)),
            dirty: Mutex::new(Vec::new()),
        }
    }

    /// Write every client's staged data, one `writev` each, without
    /// blocking; what a client's socket does not take is queued for its
    /// writer task. The session calls this when the SSH socket has nothing
    /// more to read or a read-ahead's worth was read since the last call
    /// (and before it pauses for a slow reader).
    pub fn flush_staged(&self) {
        let dirty = std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|p| p.into_inner()));
        for sink in dirty {
            sink.flush(&self.limits, &self.total, true);
        }
    }

    /// What is left of the session's allowance for stalled readers; with
    /// `spent`, charges a wait that ended without the reader draining.
    fn stall_allowance(&self, spent: Duration) -> Duration {
        let mut stalls = self.stalls.lock().unwrap_or_else(|p| p.into_inner());
        let (started, used) = &mut *stalls;
        if started.elapsed() >= self.limits.stall_window {
            *started = tokio::time::Instant::now();
            *used = Duration::ZERO;
        }
        *used += spent;
        self.limits.stall_allowance.saturating_sub(*used)
    }

    fn map(&self) -> MutexGuard<'_, HashMap<K, Arc<Sink>>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (every critical section is a single insert/get/remove).
        self.by_channel.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The server confirmed channel `id` (the session task calls this, in
    /// order with the channel's data): from now on its data is kept for the
    /// connection that opened it. A claim already released (the connection
    /// ended before the session got here) is forgotten instead.
    pub fn open(&self, id: K) {
        let mut map = self.map();
        let sink = sink_of(&mut map, id);
        let mut state = sink.state();
        if state.released {
            map.remove(&id);
        } else {
            state.confirmed = true;
        }
    }

    /// Channel `id` carries no forwarded connection (the session channel of
    /// `ssh::nodelay`): its data is dropped, as for a connection that ended
    /// before anything arrived. Call it before the channel can carry data.
    pub fn ignore(&self, id: K) {
        let mut map = self.map();
        let sink = sink_of(&mut map, id);
        let mut state = sink.state();
        state.released = true;
        // As for a dropped claim: before the confirmation, `open` removes it.
        if state.confirmed {
            map.remove(&id);
        }
    }

    /// Whether a client of this session has more than
    /// `pause_above / BEHIND_DIVISOR` (256 KiB with the defaults) queued
    /// and unread, while the server may send it more: a slow or stalled
    /// reader that the session holds back for, or soon will. The pool sends
    /// new connections to another session meanwhile
    /// (`tunnel::pool::first_not_behind`). A reader holds its queue between
    /// half of `pause_above` (where the session resumes) and `pause_above`
    /// for as long as it stays slow, so this does not flicker with each
    /// pause.
    pub fn behind(&self) -> bool {
        let above = self.limits.pause_above / BEHIND_DIVISOR;
        self.map().values().any(|sink| {
            let state = sink.state();
            !state.finished && state.overflow.is_none() && state.queued > above
        })
    }

    /// Channels that currently have a sink (open, or claimed and not yet
    /// confirmed); 0 once every connection has ended.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Data from the server for `id` (the session task calls this). Returns
    /// at once unless the client is slow (see the module docs). Data for a
    /// channel without a sink (never confirmed, or its connection ended) is
    /// dropped.
    pub async fn deliver(&self, id: K, data: Bytes) {
        let Some(sink) = self.map().get(&id).cloned() else {
            return;
        };
        let budget = match sink.deliver(data, &self.limits, &self.total) {
            Delivered::Done => return,
            Delivered::Staged { first, full } => {
                if full {
                    sink.flush(&self.limits, &self.total, false);
                }
                if first {
                    self.dirty
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(sink);
                }
                return;
            }
            Delivered::Pause(budget) => budget,
        };
        let allowance = self.stall_allowance(Duration::ZERO);
        let budget = if sink.state().progressing(&self.limits) {
            // A reader (or a new connection) gets back-pressure even when
            // stalled readers used up (almost) all the allowance, else it
            // would be cut for being slower than sshd (or for its task
            // starting late); past the allowance in short waits, so that a
            // burst of clients that read a little and then stop costs
            // little.
            budget.min(allowance.max(self.limits.pause_budget / PROBE_DIVISOR))
        } else if !allowance.is_zero() {
            budget.min(allowance)
        } else {
            return;
        };
        // Other clients must not wait for their staged data meanwhile.
        self.flush_staged();
        let started = tokio::time::Instant::now();
        let written_before = sink.state().written;
        let low = self.limits.pause_above / 2;
        let drained = tokio::time::timeout(budget, sink.drained(low))
            .await
            .is_ok();
        let mut state = sink.state();
        let min_progress = (self.limits.pause_above / MIN_PROGRESS_DIVISOR) as u64;
        if drained || state.written >= written_before + min_progress {
            // It read half its queue within the budget, or at least a
            // fair part of it: slow, not stalled. It gets the whole budget
            // again next time, however long the transfer (a download to a
            // slow disk, or a reader on a loaded machine, must not be cut
            // off). A trickle (a byte now and then) does not count: it
            // would hold the session at its pace for ever.
            state.pause_budget_used = Duration::ZERO;
        } else {
            // Stalled: with budget used, not `progressing` again until it
            // catches up, or reads a fair part in a later wait (so a client
            // that read a little, then stopped, costs one wait past the
            // allowance).
            state.pause_budget_used += started.elapsed();
            drop(state);
            self.stall_allowance(started.elapsed());
        }
    }

    /// The server sent EOF or closed `id`: nothing more will come.
    pub fn finish(&self, id: K) {
        let sink = self.map().get(&id).cloned();
        if let Some(sink) = sink {
            sink.finish(&self.limits, &self.total, false);
        }
    }

    /// The session is gone: every channel of it ends. A connection whose
    /// server had not finished is written what arrived, then ends with
    /// [`SESSION_LOST`] instead of the end of the stream.
    pub fn finish_all(&self) {
        let sinks: Vec<_> = self.map().values().cloned().collect();
        for sink in sinks {
            sink.finish(&self.limits, &self.total, true);
        }
    }

    /// The connection task takes over `id`: from now on data is written to
    /// `client` directly. Whatever arrived earlier is already queued.
    pub fn claim(self: &Arc<Self>, id: K, client: Arc<OwnedWriteHalf>) -> Claimed<K> {
        // Usually `open` ran already; russh hands the channel to its opener
        // just before calling the handler, so a claim can come first.
        let sink = sink_of(&mut self.map(), id);
        sink.state().client = Some(client);
        Claimed {
            sinks: self.clone(),
            id,
            sink,
        }
    }
}

/// Channel `id`'s sink, made empty if it has none yet.
fn sink_of<K: Copy + Eq + Hash>(map: &mut HashMap<K, Arc<Sink>>, id: K) -> Arc<Sink> {
    map.entry(id)
        .or_insert_with(|| Arc::new(Sink::default()))
        .clone()
}

/// A claimed sink; dropping it forgets the channel and returns its queued
/// bytes to the agent-wide budget.
pub struct Claimed<K: Copy + Eq + Hash = ChannelId> {
    sinks: Arc<Sinks<K>>,
    id: K,
    sink: Arc<Sink>,
}

/// Why a connection ends when its session ends before its server did.
pub const SESSION_LOST: &str = "the ssh session was lost before the server ended the connection";

/// What the writer task should do next.
pub enum Next {
    Write(Bytes),
    /// The server finished and everything was written.
    Done,
    /// Everything that arrived was handed to the client's socket, but the
    /// session was lost before the server finished ([`SESSION_LOST`]).
    Lost,
    /// The client left too much unread (the limit it hit).
    Overflow(&'static str),
}

impl<K: Copy + Eq + Hash> Claimed<K> {
    /// Count every byte the server sends for this connection into
    /// `received`, starting with what arrived before the claim.
    pub fn count_received(&self, received: Arc<AtomicU64>) {
        let mut state = self.sink.state();
        received.fetch_add(state.queued as u64, Ordering::Relaxed);
        state.received = Some(received);
    }

    /// Wait for queued data, the end of the stream, or an overflow.
    pub async fn next(&self) -> Next {
        loop {
            let notified = self.sink.wake.notified();
            {
                let mut state = self.sink.state();
                if let Some(why) = state.overflow {
                    return Next::Overflow(why);
                }
                if let Some(data) = state.queue.pop_front() {
                    // Still counted as queued until written, so deliver()
                    // keeps appending behind it rather than writing past it.
                    state.writing = data.len();
                    return Next::Write(data);
                }
                if state.finished {
                    return if state.lost { Next::Lost } else { Next::Done };
                }
            }
            notified.await;
        }
    }

    /// The connection's writer: write what had to be queued, in order, until
    /// the server finished (`Ok`, also when the client went away), the
    /// client was cut off for leaving too much unread (`Err`, the limit), or
    /// the session was lost first (`Err`, [`SESSION_LOST`], once all that
    /// arrived is handed to the client's socket).
    pub async fn write_queued_to(&self, client: &OwnedWriteHalf) -> Result<(), &'static str> {
        loop {
            match self.next().await {
                Next::Write(data) => {
                    // A client that stopped reading never finishes this write.
                    let written = tokio::select! {
                        written = write_all(client, &data, |n| self.sink.state().took(n)) => written,
                        why = self.overflowed() => return Err(why),
                    };
                    self.written();
                    if written.is_err() {
                        return Ok(());
                    }
                }
                Next::Done => return Ok(()),
                Next::Lost => return Err(SESSION_LOST),
                Next::Overflow(why) => return Err(why),
            }
        }
    }

    /// Resolves when the client is cut off for leaving too much unread; the
    /// writer races this against a write the client may never take.
    pub async fn overflowed(&self) -> &'static str {
        loop {
            let notified = self.sink.cut.notified();
            if let Some(why) = self.sink.state().overflow {
                return why;
            }
            notified.await;
        }
    }

    /// The chunk `next` returned has been written.
    pub fn written(&self) {
        let mut state = self.sink.state();
        let n = std::mem::take(&mut state.writing);
        state.queued -= n;
        if state.queued == 0 {
            // Caught up: a later slow patch may pause the session again.
            state.pause_budget_used = Duration::ZERO;
        }
        drop(state);
        self.sinks.total.sub(n);
        self.sink.drained.notify_waiters();
    }
}

impl<K: Copy + Eq + Hash> Drop for Claimed<K> {
    fn drop(&mut self) {
        let mut map = self.sinks.map();
        let mut state = self.sink.state();
        state.released = true;
        // Not yet confirmed: `open` is still to come and removes it then
        // (removing it now would let `open` make a new, never-claimed one).
        if state.confirmed
            && map
                .get(&self.id)
                .is_some_and(|s| Arc::ptr_eq(s, &self.sink))
        {
            map.remove(&self.id);
        }
        drop(map);
        state.client = None;
        state.staged.clear();
        state.staged_bytes = 0;
        state.queue.clear();
        state.finished = true;
        let left = std::mem::take(&mut state.queued);
        let big = state.high_water > self.sinks.limits.pause_above;
        drop(state);
        self.sinks.total.sub(left);
        self.sink.drained.notify_waiters();
        if big {
            crate::mem::release_soon();
        }
    }
}

#[derive(Default)]
struct Sink {
    state: Mutex<SinkState>,
    /// Wakes the writer task: data queued, finished or overflowed.
    wake: Notify,
    /// Wakes a paused session: the writer task wrote a chunk.
    drained: Notify,
    /// Wakes a writer blocked on its client: the client is cut off.
    cut: Notify,
}

/// What [`Sink::deliver`] did with a packet's data.
enum Delivered {
    /// Queued or dropped; nothing more to do.
    Done,
    /// Staged for the next flush. `first`: the sink was not waiting for a
    /// flush yet (the caller lists it); `full`: [`STAGE_LIMIT`] is reached
    /// (the caller flushes it now).
    Staged { first: bool, full: bool },
    /// Queued behind a slow client: the session should pause up to this.
    Pause(Duration),
}

#[derive(Default)]
struct SinkState {
    /// None until the connection task claims the channel.
    client: Option<Arc<OwnedWriteHalf>>,
    /// Data for a client that is keeping up, to be written with one
    /// `writev` at the next flush; only while nothing is queued.
    staged: Vec<Bytes>,
    staged_bytes: usize,
    /// Listed in `Sinks::dirty`, waiting for a flush.
    dirty: bool,
    queue: VecDeque<Bytes>,
    /// Bytes in `queue` plus the chunk being written.
    queued: usize,
    /// Size of the chunk the writer task is writing.
    writing: usize,
    finished: bool,
    /// Finished because the session was lost, not by the server.
    lost: bool,
    overflow: Option<&'static str>,
    pause_budget_used: Duration,
    /// Bytes the client's socket took, in all.
    written: u64,
    /// When the client's socket last took data.
    last_written: Option<tokio::time::Instant>,
    /// Most bytes ever queued at once.
    high_water: usize,
    /// The session saw the server confirm the channel.
    confirmed: bool,
    /// The claim was dropped: the connection is over.
    released: bool,
    /// Where bytes from the server for this connection are counted.
    received: Option<Arc<AtomicU64>>,
}

impl SinkState {
    /// The client's socket took `n` bytes.
    fn took(&mut self, n: usize) {
        if n > 0 {
            self.written += n as u64;
            self.last_written = Some(tokio::time::Instant::now());
        }
    }

    /// No wait for the client has failed since it last caught up, and it
    /// read within the last pause budget or has not been written to yet: a
    /// reader, however slow, not a stalled client or a trickle. A sink not
    /// written to yet is unclaimed, or claimed a moment ago: its connection
    /// task has yet to run (on a busy or single-threaded runtime the session
    /// can read the server's first megabytes before it does). It gets one
    /// wait on credit, and is stalled if that wait fails.
    fn progressing(&self, limits: &Limits) -> bool {
        self.pause_budget_used.is_zero()
            && self
                .last_written
                .is_none_or(|at| at.elapsed() < limits.pause_budget)
    }
}

impl Sink {
    fn state(&self) -> MutexGuard<'_, SinkState> {
        // Every critical section leaves the state consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stage or queue `data` (see [`Delivered`]).
    fn deliver(&self, data: Bytes, limits: &Limits, total: &Buffered) -> Delivered {
        let mut state = self.state();
        if state.finished || state.overflow.is_some() {
            return Delivered::Done;
        }
        if let Some(received) = &state.received {
            received.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        if state.queued == 0 && state.client.is_some() {
            state.staged_bytes += data.len();
            state.staged.push(data);
            let first = !std::mem::replace(&mut state.dirty, true);
            return Delivered::Staged {
                first,
                full: state.staged_bytes >= STAGE_LIMIT,
            };
        }
        self.enqueue(&mut state, data, limits, total);
        // An unclaimed sink pauses too: its claim (the connection task
        // running) is what the session waits for, and then its writer
        // drains it like any other.
        let pause = (state.overflow.is_none() && state.queued > limits.pause_above)
            .then(|| limits.pause_budget.saturating_sub(state.pause_budget_used))
            .filter(|left| !left.is_zero());
        drop(state);
        self.wake.notify_one();
        pause.map_or(Delivered::Done, Delivered::Pause)
    }

    /// Queue `data` for the writer task within the limits, or mark the sink
    /// overflowed (and wake a writer blocked on the client).
    fn enqueue(&self, state: &mut SinkState, data: Bytes, limits: &Limits, total: &Buffered) {
        let n = data.len();
        // Read once: `try_add` below and the `add` after it must agree.
        let progressing = state.queued + n > limits.pause_above && state.progressing(limits);
        if state.queued + n > limits.per_connection {
            state.overflow = Some("the client left more than the per-connection buffer unread");
        } else if state.queued + n > limits.pause_above
            && !progressing
            && !total.try_add(n, limits.total)
        {
            state.overflow = Some("the agent's total buffer for unread data is full");
        } else {
            if state.queued + n <= limits.pause_above || progressing {
                // A client that keeps up queues little, and one that reads
                // is paused at `pause_above`: never cut it because stalled
                // ones filled the budget (they are cut instead).
                total.add(n);
            }
            state.queued += n;
            state.high_water = state.high_water.max(state.queued);
            state.queue.push_back(data);
        }
        if state.overflow.is_some() {
            self.cut.notify_waiters();
        }
    }

    /// Write the staged data with one non-blocking `writev`; queue what the
    /// client's socket did not take. `listed`: called for the sink's entry
    /// in `Sinks::dirty` (which is then gone).
    fn flush(&self, limits: &Limits, total: &Buffered, listed: bool) {
        let mut state = self.state();
        if listed {
            state.dirty = false;
        }
        if state.staged.is_empty() {
            return;
        }
        let staged = std::mem::take(&mut state.staged);
        state.staged_bytes = 0;
        // Staged only while claimed, and cleared when the claim ends.
        let Some(client) = state.client.clone() else {
            return;
        };
        let slices: Vec<IoSlice<'_>> = staged.iter().map(|b| IoSlice::new(b)).collect();
        let wrote = client.try_write_vectored(&slices);
        // Before the lock is released: once the claim is dropped, the
        // connection task must hold the only reference (it resets a client
        // it cut short by closing that one).
        drop(client);
        let mut written = match wrote {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            // The client is gone; its writer task ends the connection.
            Err(_) => {
                state.finished = true;
                drop(state);
                self.wake.notify_one();
                return;
            }
        };
        drop(slices);
        state.took(written);
        let mut rest = false;
        for mut data in staged {
            if written >= data.len() {
                written -= data.len();
                continue;
            }
            data.advance(written);
            written = 0;
            self.enqueue(&mut state, data, limits, total);
            rest = true;
        }
        drop(state);
        if rest {
            self.wake.notify_one();
        }
    }

    /// Resolves once at most `low` bytes are queued, or the sink ended.
    async fn drained(&self, low: usize) {
        loop {
            let notified = self.drained.notified();
            {
                let state = self.state();
                if state.queued <= low || state.finished || state.overflow.is_some() {
                    return;
                }
            }
            notified.await;
        }
    }

    /// Nothing more will come: write (or queue) what is staged, then let
    /// the writer task end the connection once the queue is written.
    /// `session_lost`: because the session ended, not the server (unless
    /// the server had finished already).
    fn finish(&self, limits: &Limits, total: &Buffered, session_lost: bool) {
        self.flush(limits, total, false);
        let mut state = self.state();
        state.lost |= session_lost && !state.finished;
        state.finished = true;
        drop(state);
        self.wake.notify_one();
        self.drained.notify_waiters();
    }
}

/// Write all of `data`, telling `took` of every part the socket takes (a
/// slow client's progress shows before the whole chunk is written).
async fn write_all(
    client: &OwnedWriteHalf,
    mut data: &[u8],
    mut took: impl FnMut(usize),
) -> std::io::Result<()> {
    while !data.is_empty() {
        client.writable().await?;
        match client.try_write(data) {
            Ok(n) => {
                took(n);
                data = &data[n..];
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl<K> Drop for Sinks<K> {
    /// Runs after every claim is gone (each holds the `Sinks`): what is left
    /// was never claimed; give its bytes back to the agent-wide budget.
    fn drop(&mut self) {
        let map = self.by_channel.get_mut().unwrap_or_else(|p| p.into_inner());
        let left: usize = map.values().map(|s| s.state().queued).sum();
        self.total.sub(left);
    }
}

#[cfg(test)]
#[path = "channel_sink_tests.rs"]
mod tests;
