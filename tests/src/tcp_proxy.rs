//! A TCP forwarder the test can cut: the relay reaches PostgreSQL through
//! it, so a test can take the database away from one relay (every open
//! connection dropped, new ones refused) and give it back, without touching
//! the server other tests share (docs/testing.md "PostgreSQL outage").
//!
//! Each accepted connection gets its own upstream connection and one task
//! copying both ways; [`TcpProxy::cut`] aborts those tasks (both sockets
//! close) and, until [`TcpProxy::restore`], closes every new connection
//! right after accepting it. Dropping the proxy stops everything.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

#[derive(Default)]
struct State {
    cut: bool,
    /// Forwarding tasks of the open connections (finished ones are pruned
    /// at each accept).
    live: Vec<AbortHandle>,
    /// Connections accepted and forwarded since the start.
    forwarded: u64,
}

/// A TCP forwarder from a loopback port to `upstream`.
pub struct TcpProxy {
    /// Where clients connect (127.0.0.1, a free port).
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    accept: JoinHandle<()>,
}

impl TcpProxy {
    /// Listen on a free loopback port and forward to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<TcpProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let st = Arc::clone(&state);
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut s = st.lock().unwrap();
                if s.cut {
                    // Refused: closed before a byte is read.
                    drop(client);
                    continue;
                }
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
        Ok(TcpProxy {
            addr,
            state,
            accept,
        })
    }

    /// Drop every open connection and refuse new ones until
    /// [`TcpProxy::restore`].
    pub fn cut(&self) {
        let mut s = self.state.lock().unwrap();
        s.cut = true;
        for task in s.live.drain(..) {
            task.abort();
        }
    }

    /// Forward new connections again.
    pub fn restore(&self) {
        self.state.lock().unwrap().cut = false;
    }

    /// Connections forwarded since the start (refused ones not counted).
    pub fn forwarded(&self) -> u64 {
        self.state.lock().unwrap().forwarded
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        for task in self.state.lock().unwrap().live.drain(..) {
            task.abort();
        }
    }
}
