//! A TCP forwarder the test can cut: the relay reaches PostgreSQL through
//! it, so a test can take the database away from one relay and give it
//! back, as a server restart does, without touching the server other tests
//! share (docs/testing.md "PostgreSQL outage").
//!
//! Each accepted connection gets its own upstream connection and one task
//! copying both ways. [`TcpProxy::cut`] closes the listening socket (new
//! connections are refused, `ECONNREFUSED`, as by a server that is down)
//! and aborts the forwarding tasks (every open connection closes);
//! [`TcpProxy::restore`] listens on the same port again. Dropping the proxy
//! stops everything.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

#[derive(Default)]
struct State {
    /// Forwarding tasks of the open connections (finished ones are pruned
    /// at each accept).
    live: Vec<AbortHandle>,
    /// Connections accepted and forwarded since the start.
    forwarded: u64,
}

/// A TCP forwarder from a loopback port to `upstream`.
pub struct TcpProxy {
    /// Where clients connect (127.0.0.1, a free port, the same across
    /// cuts).
    pub addr: SocketAddr,
    upstream: SocketAddr,
    state: Arc<Mutex<State>>,
    /// The accept loop (owning the listening socket); `None` while cut.
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl TcpProxy {
    /// Listen on a free loopback port and forward to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<TcpProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let proxy = TcpProxy {
            addr: listener.local_addr()?,
            upstream,
            state: Arc::new(Mutex::new(State::default())),
            accept: Mutex::new(None),
        };
        proxy.serve(listener);
        Ok(proxy)
    }

    fn serve(&self, listener: TcpListener) {
        let state = Arc::clone(&self.state);
        let upstream = self.upstream;
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut s = state.lock().unwrap();
                s.live.retain(|h| !h.is_finished());
                s.forwarded += 1;
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                s.live.push(task.abort_handle());
            }
        });
        *self.accept.lock().unwrap() = Some(task);
    }

    /// Stop listening (new connections are refused) and close every open
    /// connection, until [`TcpProxy::restore`].
    pub fn cut(&self) {
        if let Some(task) = self.accept.lock().unwrap().take() {
            task.abort();
        }
        for task in self.state.lock().unwrap().live.drain(..) {
            task.abort();
        }
    }

    /// Listen on the same port again and forward new connections. Panics if
    /// the port cannot be bound again within 10 s.
    pub async fn restore(&self) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        let listener = loop {
            // The aborted accept loop drops its socket at its next poll.
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => panic!("cannot listen on {} again: {e}", self.addr),
            }
        };
        self.serve(listener);
    }

    /// Connections forwarded since the start.
    pub fn forwarded(&self) -> u64 {
        self.state.lock().unwrap().forwarded
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
    }
}
