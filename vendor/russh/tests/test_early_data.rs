#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! `Handle::channel_open_direct_tcpip_with_early_data`: what is pushed
//! before the server confirms goes out first, sent by the session itself;
//! what comes after is given back to the caller, and follows it.

use std::sync::Arc;
use std::time::Duration;

use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::*;
use ssh_key::PrivateKey;
use tokio::sync::mpsc;

const TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn early_data_goes_out_on_the_confirmation_before_later_data() {
    let (opens_tx, mut opens) = mpsc::unbounded_channel();
    let (data_tx, mut received) = mpsc::unbounded_channel();
    let session = connect(Server { opens: opens_tx, data: data_tx }).await;

    let early = EarlyData::new();
    let opening = open(session, &early);
    // The server holds the open until the early data is queued.
    let reply = tokio::time::timeout(TIMEOUT, opens.recv()).await.unwrap().unwrap();
    early.push(bytes::Bytes::from_static(b"client ")).unwrap();
    early.push(bytes::Bytes::from_static(b"hello, ")).unwrap();
    reply.accept().await;

    let (_session, channel) = tokio::time::timeout(TIMEOUT, opening)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // Confirmed: the session took the queue, and gives later data back,
    // which the caller sends at once: it must arrive after the queue.
    assert!(early.is_closed());
    assert!(early.take().is_empty(), "it all fitted the window");
    let late = early.push(bytes::Bytes::from_static(b"then more")).unwrap_err();
    channel.data(&late[..]).await.unwrap();
    let expected = b"client hello, then more";
    assert_eq!(receive(&mut received, expected.len()).await, expected);
}

/// The session sends no more than the server's initial window; the rest
/// is left for the caller, who sends it first.
#[tokio::test]
async fn early_data_beyond_the_window_is_left_to_the_caller() {
    let (opens_tx, mut opens) = mpsc::unbounded_channel();
    let (data_tx, mut received) = mpsc::unbounded_channel();
    let session = connect_with_window(Server { opens: opens_tx, data: data_tx }, 1024).await;

    let early = EarlyData::new();
    let opening = open(session, &early);
    let reply = tokio::time::timeout(TIMEOUT, opens.recv()).await.unwrap().unwrap();
    let request: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    early.push(bytes::Bytes::copy_from_slice(&request[..3000])).unwrap();
    early.push(bytes::Bytes::copy_from_slice(&request[3000..])).unwrap();
    reply.accept().await;
    let (_session, channel) = tokio::time::timeout(TIMEOUT, opening)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    let left = early.take();
    assert_eq!(left.iter().map(|b| b.len()).sum::<usize>(), 4096 - 1024);
    for data in left {
        channel.data(&data[..]).await.unwrap();
    }
    assert_eq!(receive(&mut received, request.len()).await, request);
}

#[tokio::test]
async fn a_refused_open_closes_the_early_data() {
    let (opens_tx, mut opens) = mpsc::unbounded_channel();
    let (data_tx, _received) = mpsc::unbounded_channel();
    let session = connect(Server { opens: opens_tx, data: data_tx }).await;

    let early = EarlyData::new();
    let opening = open(session, &early);
    let reply = tokio::time::timeout(TIMEOUT, opens.recv()).await.unwrap().unwrap();
    early.push(bytes::Bytes::from_static(b"never sent")).unwrap();
    reply.reject(ChannelOpenFailure::ConnectFailed).await;

    let refused = tokio::time::timeout(TIMEOUT, opening).await.unwrap().unwrap();
    assert!(
        matches!(refused, Err(Error::ChannelOpenFailure(_))),
        "{:?}",
        refused.map(|_| ())
    );
    assert!(early.is_closed());
}

/// Open a direct-tcpip channel with `early` on its own task, so that the
/// test can push while the server holds the open.
fn open(
    session: client::Handle<Client>,
    early: &EarlyData,
) -> tokio::task::JoinHandle<Result<(client::Handle<Client>, Channel<client::Msg>), Error>> {
    let early = early.clone();
    tokio::spawn(async move {
        session
            .channel_open_direct_tcpip_with_early_data("target", 80, "127.0.0.1", 0, early)
            .await
            .map(|channel| (session, channel))
    })
}

/// The next `len` bytes the server received, across payloads.
async fn receive(received: &mut mpsc::UnboundedReceiver<Vec<u8>>, len: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < len {
        got.extend(tokio::time::timeout(TIMEOUT, received.recv()).await.unwrap().unwrap());
    }
    got
}

async fn connect(server: Server) -> client::Handle<Client> {
    connect_with_window(server, server::Config::default().window_size).await
}

/// A session whose server grants each channel `window` bytes.
async fn connect_with_window(server: Server, window: u32) -> client::Handle<Client> {
    let client_key = PrivateKey::random(&mut rand::rng(), ssh_key::Algorithm::Ed25519).unwrap();
    let mut config = server::Config::default();
    config.inactivity_timeout = None;
    config.window_size = window;
    config
        .keys
        .push(PrivateKey::random(&mut rand::rng(), ssh_key::Algorithm::Ed25519).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        server::run_stream(Arc::new(config), socket, server)
            .await
            .unwrap();
    });
    let mut session = client::connect(Arc::new(client::Config::default()), addr, Client)
        .await
        .unwrap();
    let auth = session
        .authenticate_publickey(
            "user",
            PrivateKeyWithHashAlg::new(Arc::new(client_key), None),
        )
        .await
        .unwrap();
    assert!(auth.success());
    session
}

struct Client;

impl client::Handler for Client {
    type Error = Error;

    async fn check_server_key(&mut self, _: &PublicKeyOrCertificate) -> Result<bool, Error> {
        Ok(true)
    }
}

/// Hands each direct-tcpip open's reply to the test, and each payload
/// received.
struct Server {
    opens: mpsc::UnboundedSender<server::ChannelOpenHandle>,
    data: mpsc::UnboundedSender<Vec<u8>>,
}

impl server::Handler for Server {
    type Error = Error;

    async fn auth_publickey(
        &mut self,
        _: &str,
        _: server::VerifiedPublicKey<'_>,
    ) -> Result<server::Auth, Error> {
        Ok(server::Auth::Accept)
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<server::Msg>,
        _host: &str,
        _port: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: server::ChannelOpenHandle,
        _session: &mut server::Session,
    ) -> Result<(), Error> {
        let _ = self.opens.send(reply);
        Ok(())
    }

    async fn data(
        &mut self,
        _channel: ChannelId,
        data: &[u8],
        _session: &mut server::Session,
    ) -> Result<(), Error> {
        let _ = self.data.send(data.to_vec());
        Ok(())
    }
}
