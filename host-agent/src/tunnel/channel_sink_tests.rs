//! Sinks against real loopback sockets.

use super::*;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

/// A loopback connection: (our write half, the peer that reads it).
async fn pair() -> (Arc<OwnedWriteHalf>, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ours = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (peer, _) = listener.accept().await.unwrap();
    let (_read, write) = ours.into_split();
    (Arc::new(write), peer)
}

/// Like `pair`, with small socket buffers, so the writer sees the reader's
/// pace every few KiB instead of once per megabytes of kernel buffer.
async fn small_buffered_pair() -> (Arc<OwnedWriteHalf>, TcpStream) {
    let listen = tokio::net::TcpSocket::new_v4().unwrap();
    listen.set_recv_buffer_size(32 * 1024).unwrap();
    listen.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = listen.listen(1).unwrap();
    let ours = tokio::net::TcpSocket::new_v4().unwrap();
    ours.set_send_buffer_size(32 * 1024).unwrap();
    let ours = ours.connect(listener.local_addr().unwrap()).await.unwrap();
    let (peer, _) = listener.accept().await.unwrap();
    let (_read, write) = ours.into_split();
    (Arc::new(write), peer)
}

/// A slow client: reads `total` bytes, 8 KiB at a time with a 1 ms nap
/// after each (at most 8 MB/s); the error says where it was cut off.
async fn read_slowly(mut peer: TcpStream, total: usize) -> Result<usize, String> {
    let mut buf = vec![0u8; 8 * 1024];
    let mut got = 0;
    while got < total {
        match peer.read(&mut buf).await {
            Ok(0) => return Err(format!("cut off after {got} bytes")),
            Ok(n) => got += n,
            Err(e) => return Err(format!("after {got} bytes: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(got)
}

/// What the session does for each packet: deliver it, then (as it reads
/// the SSH socket again) write what was staged.
async fn deliver(sinks: &Sinks<u32>, id: u32, data: &[u8]) {
    sinks.deliver(id, Bytes::copy_from_slice(data)).await;
    sinks.flush_staged();
}

/// Channel 1's client never reads: the server sends until the sink is cut
/// off, having filled what the limits let it (its pause, the allowance,
/// the agent-wide budget). Returns the claim and the client, which must
/// live as long as the test needs them.
async fn a_stalled_hog(sinks: &Arc<Sinks<u32>>) -> (Claimed<u32>, TcpStream) {
    let chunk = vec![0u8; 32 * 1024];
    sinks.open(1u32);
    let (stalled, never_reads) = pair().await;
    let hog = sinks.claim(1, stalled);
    while hog.sink.state().overflow.is_none() {
        deliver(sinks, 1, &chunk).await;
    }
    (hog, never_reads)
}

fn sinks(per_connection: usize, total: usize) -> (Arc<Sinks<u32>>, Arc<Buffered>) {
    let buffered = Arc::new(Buffered::default());
    let limits = Limits {
        per_connection,
        total,
        pause_above: 64 * 1024,
        pause_budget: Duration::from_millis(200),
        stall_allowance: Duration::from_secs(60),
        stall_window: Duration::from_secs(60),
    };
    (Arc::new(Sinks::new(limits, buffered.clone())), buffered)
}

#[tokio::test]
async fn data_before_the_claim_arrives_first_and_in_order() {
    let (sinks, buffered) = sinks(1 << 20, 1 << 20);
    let id = 7u32;
    sinks.open(id);
    deliver(&sinks, id, b"hello ").await;
    assert_eq!(buffered.get(), 6, "unclaimed data is queued and counted");
    let (client, mut peer) = pair().await;
    let claimed = sinks.claim(id, client.clone());
    deliver(&sinks, id, b"world").await;
    sinks.finish(id);
    assert_eq!(claimed.write_queued_to(&client).await, Ok(()));
    drop(claimed);
    drop(client);
    let mut got = String::new();
    peer.read_to_string(&mut got).await.unwrap();
    assert_eq!(got, "hello world");
    assert_eq!(buffered.get(), 0);
}

#[tokio::test]
async fn a_reader_that_keeps_up_is_written_to_directly() {
    let (sinks, buffered) = sinks(1 << 20, 1 << 20);
    let id = 1u32;
    let (client, mut peer) = pair().await;
    let claimed = sinks.claim(id, client);
    deliver(&sinks, id, b"direct").await;
    assert_eq!(buffered.get(), 0, "nothing queued");
    let mut got = [0u8; 6];
    peer.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"direct");
    drop(claimed);
}

#[tokio::test]
async fn a_stalled_reader_overflows_its_own_limit_and_frees_the_budget() {
    let (sinks, buffered) = sinks(256 * 1024, 1 << 30);
    let id = 3u32;
    let (client, _peer_never_reads) = pair().await;
    let claimed = sinks.claim(id, client);
    let chunk = vec![0u8; 32 * 1024];
    // Socket buffers take the first megabytes; then the queue fills.
    let started = std::time::Instant::now();
    for _ in 0..4096 {
        deliver(&sinks, id, &chunk).await;
    }
    let paused = started.elapsed();
    // A writer blocked on the stalled client hears of it too.
    let why = tokio::time::timeout(Duration::from_secs(1), claimed.overflowed())
        .await
        .expect("overflowed() resolves");
    assert!(why.contains("per-connection"));
    assert!(
        paused >= Duration::from_millis(200) && paused < Duration::from_secs(2),
        "the session paused once, for its budget: {paused:?}"
    );
    match claimed.next().await {
        Next::Overflow(why) => assert!(why.contains("per-connection"), "{why}"),
        _ => panic!("expected an overflow"),
    }
    assert!(buffered.get() > 0);
    drop(claimed);
    assert_eq!(
        buffered.get(),
        0,
        "a closed connection gives its bytes back"
    );
}

/// A client that keeps reading, only slower than the server sends, for far
/// longer than the pause budget (a download to a slow disk): the session
/// waits for it every time, and it is never cut off.
#[tokio::test]
async fn a_slow_reader_gets_back_pressure_for_as_long_as_it_reads() {
    let buffered = Arc::new(Buffered::default());
    let limits = Limits {
        per_connection: 1024 * 1024,
        total: 1 << 30,
        pause_above: 64 * 1024,
        // Each drain takes a few ms. Short enough that, without the policy,
        // the pauses add up past it before the writer ever catches up
        // completely (which refills the budget whatever the policy).
        pause_budget: Duration::from_millis(50),
        stall_allowance: Duration::from_secs(60),
        stall_window: Duration::from_secs(60),
    };
    let sinks = Arc::new(Sinks::new(limits, buffered.clone()));
    let (client, peer) = small_buffered_pair().await;
    let claimed = sinks.claim(9u32, client.clone());
    // At most 8 MB/s, for at least 0.5 s: ten times the pause budget.
    const TOTAL: usize = 4 * 1024 * 1024;
    let reader = tokio::spawn(read_slowly(peer, TOTAL));
    let pump = async {
        assert_eq!(
            claimed.write_queued_to(&client).await,
            Ok(()),
            "no overflow"
        );
    };
    let started = std::time::Instant::now();
    let send = async {
        let chunk = vec![7u8; 32 * 1024];
        for _ in 0..TOTAL / chunk.len() {
            deliver(&sinks, 9, &chunk).await;
        }
        sinks.finish(9);
    };
    tokio::join!(pump, send);
    assert_eq!(reader.await.unwrap(), Ok(TOTAL));
    assert!(
        started.elapsed() > Duration::from_millis(500),
        "the reader, not the budget, set the pace: {:?}",
        started.elapsed()
    );
}

/// Queues past `pause_above` of clients that are not reading share the
/// agent-wide budget. Here: two connections whose tasks never claimed their
/// sinks (each got its one wait on credit, and nothing drained it).
#[tokio::test]
async fn the_agent_wide_budget_is_shared_by_connections() {
    let buffered = Arc::new(Buffered::default());
    let limits = Limits {
        per_connection: 1 << 30,
        total: 64 * 1024,
        pause_above: 16 * 1024,
        pause_budget: Duration::from_millis(50),
        stall_allowance: Duration::from_secs(60),
        stall_window: Duration::from_secs(60),
    };
    let sinks = Arc::new(Sinks::new(limits, buffered.clone()));
    let (a, b) = (1u32, 2u32);
    sinks.open(a);
    sinks.open(b);
    let started = std::time::Instant::now();
    deliver(&sinks, a, &[0u8; 24 * 1024]).await;
    deliver(&sinks, b, &[0u8; 24 * 1024]).await;
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "the session waited for each claim: {:?}",
        started.elapsed()
    );
    assert_eq!(buffered.get(), 48 * 1024, "accepted on credit");
    // No longer on credit: within the budget, which b's next packet passes.
    deliver(&sinks, a, &[0u8; 8 * 1024]).await;
    deliver(&sinks, b, &[0u8; 16 * 1024]).await;
    let (client, _peer) = pair().await;
    let claimed = sinks.claim(b, client);
    match claimed.next().await {
        Next::Overflow(why) => assert!(why.contains("total"), "{why}"),
        _ => panic!("expected the total budget to refuse"),
    }
    assert_eq!(buffered.get(), 56 * 1024);
    drop(claimed);
    drop(sinks);
    assert_eq!(
        buffered.get(),
        0,
        "unclaimed bytes are returned with the session"
    );
}

/// Stalled client 1 takes (nearly) all of the session's stall allowance and
/// holds the agent-wide budget. Then channel 2 opens, its server sends 1 MiB
/// at once, and its connection task runs late: it claims the sink only
/// once the session queued past `pause_above` for it (or refused to), and
/// `claim_delay` after that. Returns how channel 2's writer ended, having
/// checked that its client got every byte if it was not cut.
async fn a_late_claim_while_a_stalled_one_holds_the_budget(
    limits: Limits,
    claim_delay: Duration,
) -> Result<(), &'static str> {
    let pause_above = limits.pause_above;
    let buffered = Arc::new(Buffered::default());
    let sinks = Arc::new(Sinks::new(limits, buffered.clone()));
    let chunk = vec![7u8; 32 * 1024];
    let hog = a_stalled_hog(&sinks).await;
    assert!(
        buffered.get() > pause_above,
        "the stalled one holds the budget"
    );

    sinks.open(2u32);
    let (client, mut peer) = pair().await;
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.map(|_| got.len())
    });
    const TOTAL: usize = 1024 * 1024;
    let send = async {
        for _ in 0..TOTAL / chunk.len() {
            deliver(&sinks, 2, &chunk).await;
        }
        sinks.finish(2);
    };
    let connect = async {
        while sinks.map().get(&2).is_none_or(|sink| {
            let state = sink.state();
            state.queued <= pause_above && state.overflow.is_none()
        }) {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(claim_delay).await;
        let claimed = sinks.claim(2, client.clone());
        let pumped = claimed.write_queued_to(&client).await;
        drop((claimed, client));
        pumped
    };
    let ((), pumped) = tokio::join!(send, connect);
    if pumped.is_ok() {
        assert_eq!(reader.await.unwrap().unwrap(), TOTAL);
    }
    drop(hog);
    pumped
}

/// The soak's case: stalled readers used the session's allowance and filled
/// the agent-wide budget; a new connection whose server speaks first and
/// fast (the soak's resetting clients' target) is read past `pause_above`
/// before its task claims it (common on one worker thread). The session
/// waits for the claim; nothing is cut. This cut 10 of 100 resetting
/// clients in `tunnel_churn` ("the agent's total buffer ... is full").
#[tokio::test]
async fn a_server_that_speaks_first_is_not_cut_while_stalled_ones_fill_the_budget() {
    let limits = Limits {
        per_connection: 512 * 1024,
        total: 128 * 1024,
        pause_above: 64 * 1024,
        pause_budget: Duration::from_millis(100),
        stall_allowance: Duration::from_millis(40),
        stall_window: Duration::from_secs(60),
    };
    let late = a_late_claim_while_a_stalled_one_holds_the_budget(limits, Duration::ZERO);
    let pumped = tokio::time::timeout(Duration::from_secs(10), late).await;
    assert_eq!(pumped, Ok(Ok(())), "the new connection was cut");
}

/// As above, but the stalled one left a sliver of the allowance (under
/// 10 ms) and the connection task is 30 ms late: the new connection still
/// gets the short wait that readers get past the allowance (100 ms here),
/// not just the sliver.
#[tokio::test]
async fn a_late_claim_gets_more_than_a_sliver_of_the_allowance() {
    let limits = Limits {
        per_connection: 512 * 1024,
        total: 128 * 1024,
        pause_above: 64 * 1024,
        pause_budget: Duration::from_millis(400),
        stall_allowance: Duration::from_millis(410),
        stall_window: Duration::from_secs(60),
    };
    let late = a_late_claim_while_a_stalled_one_holds_the_budget(limits, Duration::from_millis(30));
    let pumped = tokio::time::timeout(Duration::from_secs(10), late).await;
    assert_eq!(pumped, Ok(Ok(())), "the new connection was cut");
}

/// The connection ended (here: its client was cut off with data queued)
/// while the server kept sending, as it does until our CHANNEL_CLOSE
/// reaches it: the late data is dropped, not kept in a sink of its own that
/// nobody would ever claim or free.
#[tokio::test]
async fn data_for_a_channel_whose_connection_ended_is_dropped() {
    let (sinks, buffered) = sinks(64 * 1024, 1 << 30);
    let id = 5u32;
    sinks.open(id);
    let (client, _peer_never_reads) = pair().await;
    let claimed = sinks.claim(id, client);
    let chunk = vec![0u8; 32 * 1024];
    while buffered.get() == 0 {
        deliver(&sinks, id, &chunk).await;
    }
    drop(claimed);
    assert_eq!(buffered.get(), 0);
    for _ in 0..64 {
        deliver(&sinks, id, &chunk).await;
    }
    assert_eq!(buffered.get(), 0, "late data counted against the budget");
    assert_eq!(sinks.len(), 0, "late data re-created a sink");
}

/// russh hands the channel to its opener before the session calls
/// `open`: a connection can claim, and even end, first.
#[tokio::test]
async fn a_claim_released_before_the_confirmation_leaves_nothing_behind() {
    let (sinks, buffered) = sinks(1 << 20, 1 << 20);
    let (client, _peer) = pair().await;
    drop(sinks.claim(8u32, client));
    assert_eq!(sinks.len(), 1, "kept until the session confirms it");
    sinks.open(8);
    deliver(&sinks, 8, b"late").await;
    assert_eq!(sinks.len(), 0);
    assert_eq!(buffered.get(), 0);
}

/// The session channel that asks sshd for TCP_NODELAY carries no
/// connection: ignored before or after its confirmation, its output is
/// neither kept nor counted, and no sink is left for it.
#[tokio::test]
async fn an_ignored_channel_keeps_nothing_whenever_it_is_confirmed() {
    let (sinks, buffered) = sinks(1 << 20, 1 << 20);
    sinks.ignore(3u32);
    sinks.open(3);
    sinks.open(4);
    sinks.ignore(4);
    for id in [3, 4] {
        deliver(&sinks, id, b"a login shell's greeting").await;
        sinks.finish(id);
    }
    assert_eq!((sinks.len(), buffered.get()), (0, 0));
}

#[tokio::test]
async fn data_for_a_channel_never_opened_is_dropped() {
    let (sinks, buffered) = sinks(1 << 20, 1 << 20);
    deliver(&sinks, 11u32, b"stray").await;
    assert_eq!((sinks.len(), buffered.get()), (0, 0));
}

/// Many clients stop reading at once: the session waits for the first, up
/// to the session's allowance, and not a budget each for the rest.
#[tokio::test]
async fn a_burst_of_stalled_readers_costs_the_session_its_allowance_only() {
    let buffered = Arc::new(Buffered::default());
    let limits = Limits {
        per_connection: 256 * 1024,
        total: 1 << 30,
        pause_above: 64 * 1024,
        pause_budget: Duration::from_millis(200),
        stall_allowance: Duration::from_millis(300),
        stall_window: Duration::from_secs(60),
    };
    let sinks = Arc::new(Sinks::new(limits, buffered.clone()));
    let mut claims = Vec::new();
    let mut peers = Vec::new();
    for id in 0..8u32 {
        let (client, peer) = pair().await;
        sinks.open(id);
        claims.push(sinks.claim(id, client));
        peers.push(peer);
    }
    let chunk = vec![0u8; 32 * 1024];
    let started = std::time::Instant::now();
    for id in 0..8u32 {
        while claims[id as usize].sink.state().overflow.is_none() {
            deliver(&sinks, id, &chunk).await;
        }
    }
    let paused = started.elapsed();
    assert!(
        paused >= Duration::from_millis(300) && paused < Duration::from_millis(1000),
        "8 stalled readers x 200 ms budget, 300 ms allowance: paused {paused:?}"
    );
}

/// Stalled clients filled the agent-wide budget; a client that reads (its
/// queue stays small) must not be cut for it.
#[tokio::test]
async fn a_full_total_budget_does_not_cut_a_client_that_keeps_up() {
    let (sinks, buffered) = sinks(1 << 30, 128 * 1024);
    let _hog = a_stalled_hog(&sinks).await;
    assert!(
        buffered.get() > 64 * 1024,
        "the stalled one holds the budget"
    );
    sinks.open(2u32);
    deliver(&sinks, 2, b"a reply before the claim").await;
    let (client, mut peer) = pair().await;
    let claimed = sinks.claim(2, client.clone());
    sinks.finish(2);
    assert_eq!(claimed.write_queued_to(&client).await, Ok(()));
    drop((claimed, client));
    let mut got = String::new();
    peer.read_to_string(&mut got).await.unwrap();
    assert_eq!(got, "a reply before the claim");
}

#[tokio::test]
async fn packets_staged_between_flushes_reach_the_client_in_one_write_in_order() {
    let (sinks, buffered) = sinks(1 << 20, 1 << 20);
    let id = 4u32;
    let (client, mut peer) = pair().await;
    let claimed = sinks.claim(id, client);
    for part in ["one ", "two ", "three"] {
        sinks.deliver(id, Bytes::from_static(part.as_bytes())).await;
    }
    assert_eq!(buffered.get(), 0, "staged, not queued");
    let mut got = [0u8; 13];
    let early = tokio::time::timeout(Duration::from_millis(50), peer.read(&mut got)).await;
    assert!(early.is_err(), "nothing is written before the flush");
    sinks.flush_staged();
    peer.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"one two three");
    drop(claimed);
}

#[tokio::test]
async fn staged_data_is_written_when_the_server_finishes() {
    let (sinks, _) = sinks(1 << 20, 1 << 20);
    let id = 5u32;
    let (client, mut peer) = pair().await;
    let claimed = sinks.claim(id, client.clone());
    sinks.deliver(id, Bytes::from_static(b"last words")).await;
    sinks.finish(id);
    assert_eq!(claimed.write_queued_to(&client).await, Ok(()));
    drop(claimed);
    drop(client);
    let mut got = String::new();
    peer.read_to_string(&mut got).await.unwrap();
    assert_eq!(got, "last words");
}

/// Stalled readers used up the session's allowance and filled the
/// agent-wide budget; then a client that reads, but slower than the server
/// sends (a loaded machine), downloads: it must be paused, not cut, and get
/// every byte. This cut a download in `tunnel_churn` ("the agent's total
/// buffer ... is full", or its own limit with no pause left).
#[tokio::test]
async fn a_reader_after_stalled_ones_used_the_allowance_is_paused_not_cut() {
    let buffered = Arc::new(Buffered::default());
    let limits = Limits {
        per_connection: 512 * 1024,
        total: 128 * 1024,
        pause_above: 64 * 1024,
        pause_budget: Duration::from_millis(100),
        stall_allowance: Duration::from_millis(40),
        stall_window: Duration::from_secs(60),
    };
    let sinks = Arc::new(Sinks::new(limits, buffered.clone()));
    let chunk = vec![7u8; 32 * 1024];
    let hog = a_stalled_hog(&sinks).await;
    assert!(sinks.stall_allowance(Duration::ZERO).is_zero());
    assert!(
        buffered.get() > 64 * 1024,
        "the stalled one holds the budget"
    );

    sinks.open(2u32);
    let (client, peer) = small_buffered_pair().await;
    let claimed = sinks.claim(2, client.clone());
    const TOTAL: usize = 4 * 1024 * 1024;
    let reader = tokio::spawn(read_slowly(peer, TOTAL));
    let pump = claimed.write_queued_to(&client);
    let send = async {
        for _ in 0..TOTAL / chunk.len() {
            deliver(&sinks, 2, &chunk).await;
        }
        sinks.finish(2);
    };
    let (pumped, ()) = tokio::join!(pump, send);
    drop((claimed, client));
    assert_eq!(pumped, Ok(()), "the reader was cut");
    assert_eq!(reader.await.unwrap(), Ok(TOTAL));
    drop(hog);
}

/// A client that reads 4 KiB every 10 ms (at most 400 KiB/s: less than the
/// eighth of `pause_above` per wait that shows a reader) is a trickle, not
/// a slow reader: it must not hold the session at its pace (3 MiB would
/// take over 7 s); it is waited for about once and then cut.
#[tokio::test]
async fn a_trickling_reader_costs_the_session_one_budget_and_is_cut() {
    let limits = Limits {
        per_connection: 2 * 1024 * 1024,
        total: 1 << 30,
        pause_above: 1024 * 1024,
        pause_budget: Duration::from_millis(200),
        stall_allowance: Duration::from_secs(60),
        stall_window: Duration::from_secs(60),
    };
    let sinks = Arc::new(Sinks::new(limits, Arc::new(Buffered::default())));
    let (client, mut peer) = small_buffered_pair().await;
    let claimed = sinks.claim(4u32, client.clone());
    let trickle = tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while peer.read(&mut buf).await.is_ok_and(|n| n > 0) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let chunk = vec![0u8; 32 * 1024];
    let started = std::time::Instant::now();
    let send = async {
        for _ in 0..3 * 32 {
            deliver(&sinks, 4, &chunk).await;
        }
        sinks.finish(4);
    };
    let (pumped, ()) = tokio::join!(claimed.write_queued_to(&client), send);
    let paused = started.elapsed();
    assert!(
        matches!(pumped, Err(why) if why.contains("per-connection")),
        "{pumped:?} after {paused:?}"
    );
    assert!(
        paused < Duration::from_secs(1),
        "a 200 ms budget: the session waited {paused:?} for a trickle"
    );
    drop((claimed, client));
    trickle.abort();
}

#[tokio::test]
async fn a_lost_session_delivers_what_arrived_then_says_so() {
    let (sinks, _) = sinks(1 << 20, 1 << 20);
    let (client, mut peer) = pair().await;
    let cut = sinks.claim(1u32, client.clone());
    let (done_client, mut done_peer) = pair().await;
    let done = sinks.claim(2u32, done_client.clone());
    sinks.deliver(1, Bytes::from_static(b"half of it")).await;
    sinks.deliver(2, Bytes::from_static(b"all of it")).await;
    // Channel 2's server finished before the session went.
    sinks.finish(2);
    sinks.finish_all();
    assert_eq!(cut.write_queued_to(&client).await, Err(SESSION_LOST));
    assert_eq!(done.write_queued_to(&done_client).await, Ok(()));
    drop(cut);
    drop(client);
    let mut got = String::new();
    peer.read_to_string(&mut got).await.unwrap();
    assert_eq!(got, "half of it", "what arrived is written first");
    drop(done);
    drop(done_client);
    let mut whole = String::new();
    done_peer.read_to_string(&mut whole).await.unwrap();
    assert_eq!(whole, "all of it", "a finished stream ends as usual");
}
