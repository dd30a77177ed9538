//! Baseline (a): raw iroh, no storage, no protocol. A server answers each
//! request on a bi stream (`u32 length ‖ body`, answered with the body's
//! length), or counts a bulk stream. Same endpoint setup as the relay and
//! the client (offline, direct addresses, loopback).

use anyhow::{Context, Result, bail};
use iroh::endpoint::{Connection, presets};
use iroh::{Endpoint, EndpointAddr, NetReportConfig, RelayMode};
use std::net::SocketAddr;

/// ALPN of the echo server.
pub const ECHO_ALPN: &[u8] = b"/0k-sync-bench/echo";
const BULK: u32 = u32::MAX;

/// A raw iroh echo server in this process.
pub struct EchoServer {
    endpoint: Endpoint,
    task: tokio::task::JoinHandle<()>,
}

async fn bind(alpns: Vec<Vec<u8>>) -> Result<Endpoint> {
    Ok(Endpoint::builder(presets::Minimal)
        .relay_mode(RelayMode::Disabled)
        .clear_address_lookup()
        .clear_ip_transports()
        .bind_addr("127.0.0.1:0".parse::<SocketAddr>()?)?
        .portmapper_config(iroh::endpoint::PortmapperConfig::Disabled)
        .net_report_config(NetReportConfig::minimal())
        .alpns(alpns)
        .bind()
        .await?)
}

async fn serve_stream(
    mut send: iroh::endpoint::SendStream,
    mut recv: iroh::endpoint::RecvStream,
) -> Result<()> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len);
    let count = if len == BULK {
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        while let Some(n) = recv.read(&mut buf).await? {
            total += n as u64;
        }
        total
    } else {
        if len > 64 << 20 {
            bail!("request too large");
        }
        let mut body = vec![0u8; len as usize];
        recv.read_exact(&mut body).await?;
        u64::from(len)
    };
    send.write_all(&count.to_be_bytes()).await?;
    send.finish()?;
    Ok(())
}

impl EchoServer {
    /// Start on a free loopback port.
    pub async fn start() -> Result<EchoServer> {
        let endpoint = bind(vec![ECHO_ALPN.to_vec()]).await?;
        let ep = endpoint.clone();
        let task = tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    while let Ok((send, recv)) = conn.accept_bi().await {
                        tokio::spawn(serve_stream(send, recv));
                    }
                });
            }
        });
        Ok(EchoServer { endpoint, task })
    }

    /// Where to dial it.
    pub fn addr(&self) -> Result<EndpointAddr> {
        let ip = *self.endpoint.bound_sockets().first().context("bound")?;
        Ok(EndpointAddr::new(self.endpoint.id()).with_ip_addr(ip))
    }

    /// Open a client connection (its own endpoint, like a device).
    pub async fn connect(&self) -> Result<(Endpoint, Connection)> {
        let ep = bind(vec![]).await?;
        let conn = ep.connect(self.addr()?, ECHO_ALPN).await?;
        Ok((ep, conn))
    }

    /// Stop the server.
    pub async fn close(self) {
        self.task.abort();
        self.endpoint.close().await;
    }
}

/// One request/response on a new bi stream.
pub async fn request(conn: &Connection, payload: &[u8]) -> Result<()> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&(payload.len() as u32).to_be_bytes())
        .await?;
    send.write_all(payload).await?;
    send.finish()?;
    let mut answer = [0u8; 8];
    recv.read_exact(&mut answer).await?;
    Ok(())
}

/// Stream `total` bytes on one bi stream in `chunk`-sized writes.
pub async fn bulk(conn: &Connection, total: u64, chunk: &[u8]) -> Result<u64> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&BULK.to_be_bytes()).await?;
    let mut sent = 0u64;
    while sent < total {
        let n = chunk.len().min((total - sent) as usize);
        send.write_all(&chunk[..n]).await?;
        sent += n as u64;
    }
    send.finish()?;
    let mut answer = [0u8; 8];
    recv.read_exact(&mut answer).await?;
    Ok(u64::from_be_bytes(answer))
}
