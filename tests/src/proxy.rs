//! A userspace UDP fault proxy for loopback tests (kernel `netem` is not
//! available here). It sits between a QUIC client and the relay: the client
//! dials the proxy's address, and each client address gets its own upstream
//! socket to the relay.
//!
//! iroh's NAT traversal advertises the relay's own addresses to the client,
//! which would then open a direct path around the proxy. So a relay behind
//! the proxy listens on IPv6 loopback (`[::1]`) while the proxy listens on
//! IPv4 loopback: the client's IPv4-only endpoint cannot use the advertised
//! address, and every packet goes through the proxy
//! ([`crate::RelayProcess::start_behind_proxy`]). Faults apply per direction and can be changed while
//! traffic flows: delay and jitter, loss (optionally correlated),
//! duplication, reordering, a bandwidth cap (with a bounded queue, like a
//! router), and a full blackhole.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Faults of one direction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Drop every packet.
    pub blackhole: bool,
    /// Fixed one-way delay.
    pub delay: Duration,
    /// Uniform extra delay in `[-jitter, +jitter]` (never below zero total).
    pub jitter: Duration,
    /// Probability of dropping a packet, 0..=1.
    pub loss: f64,
    /// Probability of dropping a packet right after a dropped one (bursty
    /// loss); 0 means independent losses.
    pub loss_correlation: f64,
    /// Probability of sending a packet twice.
    pub duplicate: f64,
    /// Probability of holding a packet back (by `reorder_by`) so later ones
    /// overtake it.
    pub reorder: f64,
    /// How long a reordered packet is held back.
    pub reorder_by: Duration,
    /// Bytes per second; `None` = unlimited. Packets queue behind the cap
    /// and are dropped when the queue holds more than `queue` of delay.
    pub bandwidth: Option<u64>,
    /// Most queueing delay before tail drop (default 200 ms when zero).
    pub queue: Duration,
}

impl Faults {
    /// Only a fixed delay.
    pub fn delay(ms: u64) -> Self {
        Faults {
            delay: Duration::from_millis(ms),
            ..Faults::default()
        }
    }
}

/// Faults for both directions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Link {
    /// Client → relay.
    pub up: Faults,
    /// Relay → client.
    pub down: Faults,
}

impl Link {
    /// The same faults both ways.
    pub fn both(f: Faults) -> Self {
        Link {
            up: f.clone(),
            down: f,
        }
    }
}

/// Packet counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Packets received from either side.
    pub received: u64,
    /// Packets sent on (duplicates included).
    pub forwarded: u64,
    /// Packets dropped by loss, blackhole, a full queue or an unanswered
    /// client address.
    pub dropped: u64,
    /// Distinct client addresses (UDP sockets, so dials from fresh
    /// endpoints) seen.
    pub clients: u64,
}

struct Direction {
    rng: SmallRng,
    last_lost: bool,
    /// When the bandwidth-capped link is free again.
    busy_until: Instant,
}

struct Shared {
    link: Link,
    up: Direction,
    down: Direction,
    stats: ProxyStats,
    /// How many of the next new client addresses get no answer at all.
    unanswered: u64,
}

/// A running proxy; stops when dropped.
pub struct UdpProxy {
    /// Where clients send.
    pub addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    task: JoinHandle<()>,
}

enum Verdict {
    Drop,
    Send(Vec<Duration>),
}

fn decide(dir: &mut Direction, f: &Faults, len: usize) -> Verdict {
    if f.blackhole {
        return Verdict::Drop;
    }
    let p = if dir.last_lost && f.loss_correlation > 0.0 {
        f.loss_correlation
    } else {
        f.loss
    };
    if p > 0.0 && dir.rng.random_bool(p.clamp(0.0, 1.0)) {
        dir.last_lost = true;
        return Verdict::Drop;
    }
    dir.last_lost = false;
    let now = Instant::now();
    let mut queued = Duration::ZERO;
    if let Some(bps) = f.bandwidth {
        let start = dir.busy_until.max(now);
        let wait = start - now;
        let limit = if f.queue.is_zero() {
            Duration::from_millis(200)
        } else {
            f.queue
        };
        if wait > limit {
            return Verdict::Drop;
        }
        let tx = Duration::from_secs_f64(len as f64 / bps.max(1) as f64);
        dir.busy_until = start + tx;
        queued = wait + tx;
    }
    let mut delay = f.delay + queued;
    if !f.jitter.is_zero() {
        let j = f.jitter.as_secs_f64();
        let d = delay.as_secs_f64() + dir.rng.random_range(-j..=j);
        delay = Duration::from_secs_f64(d.max(0.0));
    }
    if f.reorder > 0.0 && dir.rng.random_bool(f.reorder.clamp(0.0, 1.0)) {
        delay += if f.reorder_by.is_zero() {
            Duration::from_millis(20)
        } else {
            f.reorder_by
        };
    }
    let mut sends = vec![delay];
    if f.duplicate > 0.0 && dir.rng.random_bool(f.duplicate.clamp(0.0, 1.0)) {
        sends.push(delay + Duration::from_millis(1));
    }
    Verdict::Send(sends)
}

async fn send_later(sock: Arc<UdpSocket>, to: Option<SocketAddr>, data: Vec<u8>, after: Duration) {
    if !after.is_zero() {
        tokio::time::sleep(after).await;
    }
    let _ = match to {
        Some(to) => sock.send_to(&data, to).await,
        None => sock.send(&data).await,
    };
}

async fn forward(
    shared: &Mutex<Shared>,
    up: bool,
    sock: &Arc<UdpSocket>,
    to: Option<SocketAddr>,
    data: &[u8],
) {
    let verdict = {
        let mut s = shared.lock().unwrap();
        s.stats.received += 1;
        let Shared {
            link,
            up: u,
            down: d,
            ..
        } = &mut *s;
        let v = if up {
            decide(u, &link.up, data.len())
        } else {
            decide(d, &link.down, data.len())
        };
        match &v {
            Verdict::Drop => s.stats.dropped += 1,
            Verdict::Send(sends) => s.stats.forwarded += sends.len() as u64,
        }
        v
    };
    if let Verdict::Send(sends) = verdict {
        for after in sends {
            if after.is_zero() {
                // In order, right away.
                let _ = match to {
                    Some(to) => sock.send_to(data, to).await,
                    None => sock.send(data).await,
                };
            } else {
                tokio::spawn(send_later(Arc::clone(sock), to, data.to_vec(), after));
            }
        }
    }
}

impl UdpProxy {
    /// Start a proxy on a free loopback port forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> UdpProxy {
        Self::with_seed(upstream, 0x5eed).await
    }

    /// As [`UdpProxy::start`] with a given random seed (reproducible faults).
    pub async fn with_seed(upstream: SocketAddr, seed: u64) -> UdpProxy {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind proxy"));
        let addr = front.local_addr().unwrap();
        let now = Instant::now();
        let shared = Arc::new(Mutex::new(Shared {
            link: Link::default(),
            up: Direction {
                rng: SmallRng::seed_from_u64(seed),
                last_lost: false,
                busy_until: now,
            },
            down: Direction {
                rng: SmallRng::seed_from_u64(seed ^ 0xffff),
                last_lost: false,
                busy_until: now,
            },
            stats: ProxyStats::default(),
            unanswered: 0,
        }));
        let task = tokio::spawn(run(front, upstream, Arc::clone(&shared)));
        UdpProxy { addr, shared, task }
    }

    /// Replace the faults (takes effect for the next packet).
    pub fn set(&self, link: Link) {
        self.shared.lock().unwrap().link = link;
    }

    /// Drop everything both ways for `d`, then restore the previous faults.
    pub fn blackhole_for(&self, d: Duration) -> JoinHandle<()> {
        let before = {
            let mut s = self.shared.lock().unwrap();
            let before = s.link.clone();
            s.link.up.blackhole = true;
            s.link.down.blackhole = true;
            before
        };
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            shared.lock().unwrap().link = before;
        })
    }

    /// The next `n` new client addresses (dials from fresh endpoints) are
    /// never answered: nothing they send is forwarded, whatever the faults,
    /// like a dial whose packets the relay never sees. Later addresses pass.
    pub fn leave_unanswered(&self, n: u64) {
        self.shared.lock().unwrap().unanswered = n;
    }

    /// Counters so far.
    pub fn stats(&self) -> ProxyStats {
        self.shared.lock().unwrap().stats
    }
}

impl Drop for UdpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(front: Arc<UdpSocket>, upstream: SocketAddr, shared: Arc<Mutex<Shared>>) {
    let mut clients: HashMap<SocketAddr, (Arc<UdpSocket>, JoinHandle<()>)> = HashMap::new();
    let mut unanswered = std::collections::HashSet::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, from)) = front.recv_from(&mut buf).await else {
            return;
        };
        if !clients.contains_key(&from) && !unanswered.contains(&from) {
            let mut s = shared.lock().unwrap();
            s.stats.clients += 1;
            if s.unanswered > 0 {
                s.unanswered -= 1;
                unanswered.insert(from);
            }
        }
        if unanswered.contains(&from) {
            let mut s = shared.lock().unwrap();
            s.stats.received += 1;
            s.stats.dropped += 1;
            continue;
        }
        let up = match clients.get(&from) {
            Some((sock, _)) => Arc::clone(sock),
            None => {
                // The upstream socket speaks the relay's address family.
                let local = if upstream.is_ipv6() {
                    "[::1]:0"
                } else {
                    "127.0.0.1:0"
                };
                let Ok(sock) = UdpSocket::bind(local).await else {
                    shared.lock().unwrap().stats.dropped += 1;
                    continue;
                };
                if sock.connect(upstream).await.is_err() {
                    shared.lock().unwrap().stats.dropped += 1;
                    continue;
                }
                let sock = Arc::new(sock);
                // Relay → client for this client.
                let back = {
                    let (sock, front, shared) =
                        (Arc::clone(&sock), Arc::clone(&front), Arc::clone(&shared));
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 65_536];
                        while let Ok(n) = sock.recv(&mut buf).await {
                            forward(&shared, false, &front, Some(from), &buf[..n]).await;
                        }
                    })
                };
                clients.insert(from, (Arc::clone(&sock), back));
                sock
            }
        };
        forward(&shared, true, &up, None, &buf[..n]).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> (SocketAddr, JoinHandle<()>) {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                let _ = sock.send_to(&buf[..n], from).await;
            }
        });
        (addr, task)
    }

    async fn client(proxy: &UdpProxy) -> UdpSocket {
        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        c.connect(proxy.addr).await.unwrap();
        c
    }

    async fn round_trip(c: &UdpSocket, msg: &[u8], wait: Duration) -> Option<Vec<u8>> {
        c.send(msg).await.unwrap();
        let mut buf = vec![0u8; 2048];
        match tokio::time::timeout(wait, c.recv(&mut buf)).await {
            Ok(Ok(n)) => Some(buf[..n].to_vec()),
            _ => None,
        }
    }

    /// Generous: only there so that a broken proxy fails instead of hanging.
    const DEADLINE: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn forwards_both_ways_and_blackholes_on_demand() {
        let (echo, _e) = echo_server().await;
        let proxy = UdpProxy::start(echo).await;
        let c = client(&proxy).await;
        assert_eq!(
            round_trip(&c, b"ping", DEADLINE).await.as_deref(),
            Some(&b"ping"[..])
        );
        let before = proxy.stats();
        proxy.set(Link::both(Faults {
            blackhole: true,
            ..Faults::default()
        }));
        c.send(b"lost").await.unwrap();
        wait_until("the proxy to read the datagram", || {
            proxy.stats().received == before.received + 1
        })
        .await;
        let during = proxy.stats();
        assert_eq!(during.dropped, before.dropped + 1);
        assert_eq!(during.forwarded, before.forwarded);
        proxy.set(Link::default());
        assert_eq!(
            round_trip(&c, b"back", DEADLINE).await.as_deref(),
            Some(&b"back"[..])
        );
    }

    #[tokio::test]
    async fn blackhole_for_restores_the_previous_faults() {
        let (echo, _e) = echo_server().await;
        let proxy = UdpProxy::start(echo).await;
        let link = Link::both(Faults::delay(7));
        proxy.set(link.clone());
        let restore = proxy.blackhole_for(Duration::from_millis(50));
        {
            let s = proxy.shared.lock().unwrap();
            assert!(s.link.up.blackhole && s.link.down.blackhole);
        }
        restore.await.unwrap();
        assert_eq!(proxy.shared.lock().unwrap().link, link);
    }

    #[test]
    fn delay_and_jitter_are_what_was_asked() {
        let mut d = Direction {
            rng: SmallRng::seed_from_u64(1),
            last_lost: false,
            busy_until: Instant::now(),
        };
        assert!(matches!(
            decide(&mut d, &Faults::delay(40), 100),
            Verdict::Send(s) if s == [Duration::from_millis(40)]
        ));
        let f = Faults {
            jitter: Duration::from_millis(30),
            ..Faults::delay(100)
        };
        let delays: Vec<Duration> = (0..1000)
            .map(|_| match decide(&mut d, &f, 100) {
                Verdict::Send(s) => s[0],
                Verdict::Drop => panic!("nothing may be dropped"),
            })
            .collect();
        let (lo, hi) = (Duration::from_millis(70), Duration::from_millis(130));
        assert!(delays.iter().all(|x| (lo..=hi).contains(x)));
        // Seeded, so these hold on every run: the jitter spreads both ways.
        assert!(delays.iter().any(|x| *x < Duration::from_millis(80)));
        assert!(delays.iter().any(|x| *x > Duration::from_millis(120)));
    }

    #[tokio::test]
    async fn delay_is_added_each_way() {
        let (echo, _e) = echo_server().await;
        let proxy = UdpProxy::start(echo).await;
        proxy.set(Link {
            up: Faults::delay(40),
            down: Faults::delay(60),
        });
        let c = client(&proxy).await;
        let t = std::time::Instant::now();
        assert!(round_trip(&c, b"x", DEADLINE).await.is_some());
        // A lower bound: a slow machine only makes it longer.
        assert!(
            t.elapsed() >= Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
    }

    async fn wait_until(what: &str, check: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + DEADLINE;
        while !check() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Through real sockets, with the proxy's seeded generator: exactly the
    /// datagrams a generator with the same seed drops are dropped, and every
    /// other one reaches the far side. Datagrams are sent in small batches,
    /// each waited for, so none is lost in a socket buffer.
    #[tokio::test]
    async fn loss_drops_exactly_what_the_seeded_generator_says() {
        const SEED: u64 = 42;
        const N: u64 = 1000;
        let sink = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let sink_addr = sink.local_addr().unwrap();
        let arrived = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = Arc::clone(&arrived);
        let _sink = tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            while sink.recv(&mut buf).await.is_ok() {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        let proxy = UdpProxy::with_seed(sink_addr, SEED).await;
        let faults = Faults {
            loss: 0.3,
            ..Faults::default()
        };
        proxy.set(Link {
            up: faults.clone(),
            down: Faults::default(),
        });
        let c = client(&proxy).await;
        for i in 0..N {
            c.send(&i.to_be_bytes()).await.unwrap();
            if i % 20 == 19 {
                wait_until("the proxy to read a batch", || {
                    proxy.stats().received == i + 1
                })
                .await;
            }
        }
        let mut reference = Direction {
            rng: SmallRng::seed_from_u64(SEED),
            last_lost: false,
            busy_until: Instant::now(),
        };
        let expected_drops = (0..N)
            .filter(|_| matches!(decide(&mut reference, &faults, 8), Verdict::Drop))
            .count() as u64;
        let s = proxy.stats();
        assert_eq!(s.received, N);
        assert_eq!(s.dropped, expected_drops);
        assert_eq!(s.forwarded, N - expected_drops);
        // The seeded rate is near the configured one (a fixed number).
        assert!((240..360).contains(&expected_drops), "{expected_drops}");
        wait_until("every forwarded datagram to arrive", || {
            arrived.load(std::sync::atomic::Ordering::SeqCst) == N - expected_drops
        })
        .await;
    }

    /// Seeded, so deterministic; the bound is four standard deviations of
    /// the binomial count (±580 around 30,000), tight enough that a drop
    /// rate 5 % above the configured one fails.
    #[test]
    fn loss_rate_is_the_configured_probability() {
        let mut d = Direction {
            rng: SmallRng::seed_from_u64(7),
            last_lost: false,
            busy_until: Instant::now(),
        };
        let f = Faults {
            loss: 0.3,
            ..Faults::default()
        };
        let n = 100_000;
        let dropped = (0..n)
            .filter(|_| matches!(decide(&mut d, &f, 100), Verdict::Drop))
            .count() as f64;
        let sigma = (n as f64 * 0.3 * 0.7).sqrt();
        assert!(
            (dropped - 0.3 * n as f64).abs() < 4.0 * sigma,
            "{dropped} of {n} dropped"
        );
    }

    #[test]
    fn correlated_loss_comes_in_bursts() {
        let mut d = Direction {
            rng: SmallRng::seed_from_u64(1),
            last_lost: false,
            busy_until: Instant::now(),
        };
        let f = Faults {
            loss: 0.1,
            loss_correlation: 0.9,
            ..Faults::default()
        };
        let lost: Vec<bool> = (0..5000)
            .map(|_| matches!(decide(&mut d, &f, 100), Verdict::Drop))
            .collect();
        let after_loss = lost.windows(2).filter(|w| w[0]).count();
        let loss_after_loss = lost.windows(2).filter(|w| w[0] && w[1]).count();
        assert!(loss_after_loss as f64 / after_loss as f64 > 0.8, "bursty");
    }

    /// On tokio's paused clock, so time does not pass between decisions.
    #[tokio::test(start_paused = true)]
    async fn bandwidth_cap_spaces_packets_and_tail_drops() {
        let mut d = Direction {
            rng: SmallRng::seed_from_u64(1),
            last_lost: false,
            busy_until: Instant::now(),
        };
        let f = Faults {
            bandwidth: Some(10_000),
            queue: Duration::from_millis(500),
            ..Faults::default()
        };
        let mut delays = Vec::new();
        let mut drops = 0;
        for _ in 0..20 {
            match decide(&mut d, &f, 1000) {
                Verdict::Send(s) => delays.push(s[0]),
                Verdict::Drop => drops += 1,
            }
        }
        // 1000 B at 10 kB/s = 100 ms per packet; a 500 ms queue holds 6
        // (the sixth waits exactly 500 ms), the rest are tail-dropped.
        assert_eq!(
            delays,
            (1..=6)
                .map(|k| Duration::from_millis(100 * k))
                .collect::<Vec<_>>()
        );
        assert_eq!(drops, 14);
        let dup = Faults {
            duplicate: 1.0,
            ..Faults::default()
        };
        assert!(matches!(decide(&mut d, &dup, 10), Verdict::Send(s) if s.len() == 2));
    }
}
