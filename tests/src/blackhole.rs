//! A loopback TCP relay that can be frozen: while frozen it keeps every
//! connection open and moves no byte in either direction, as a network that
//! blackholes a peer does. Put between one client and the API server to make
//! that client's calls hang while everyone else's still work.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

/// The relay; stops accepting and relaying when dropped.
pub struct Blackhole {
    addr: SocketAddr,
    frozen: Arc<AtomicBool>,
    stopped: Arc<AtomicBool>,
}

impl Blackhole {
    /// Relay connections to `127.0.0.1:<listen port>` to `target`.
    pub fn start(target: SocketAddr) -> std::io::Result<Blackhole> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let frozen = Arc::new(AtomicBool::new(false));
        let stopped = Arc::new(AtomicBool::new(false));
        let (f, s) = (frozen.clone(), stopped.clone());
        thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        if let Ok(server) = TcpStream::connect(target) {
                            relay(client, server, f.clone(), s.clone());
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => break,
                }
            }
        });
        Ok(Blackhole {
            addr,
            frozen,
            stopped,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop moving bytes (connections stay open), or resume.
    pub fn set_frozen(&self, frozen: bool) {
        self.frozen.store(frozen, Ordering::SeqCst);
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
    }
}

fn relay(a: TcpStream, b: TcpStream, frozen: Arc<AtomicBool>, stopped: Arc<AtomicBool>) {
    for (from, to) in [(&a, &b), (&b, &a)] {
        let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) else {
            return;
        };
        let (frozen, stopped) = (frozen.clone(), stopped.clone());
        thread::spawn(move || copy(from, to, &frozen, &stopped));
    }
}

/// Copy until EOF or error; while frozen, read nothing (the kernel's buffers
/// fill and the sender stalls, as behind a blackhole).
fn copy(mut from: TcpStream, mut to: TcpStream, frozen: &AtomicBool, stopped: &AtomicBool) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(20)));
    let mut buf = vec![0u8; 64 * 1024];
    while !stopped.load(Ordering::Relaxed) {
        if frozen.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(5));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                // Bytes read just as the freeze began are held back too.
                while frozen.load(Ordering::SeqCst) && !stopped.load(Ordering::Relaxed) {
                    thread::sleep(Duration::from_millis(5));
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
