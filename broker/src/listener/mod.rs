//! Listeners: accept loops that hand each connection to `connection::serve`, with a
//! [`PeerInfo`](crate::connection::PeerInfo) filled in from the transport.
//!
//! `[listeners] tcp` is the plain listener every deployment has ([`tcp`]); each
//! `[[listeners.mqtt]]` entry starts one more ([`spawn`]): `tcp` and `ws` (optionally behind a
//! PROXY v1/v2 header), `tls` and `wss` (rustls), and `quic` (quinn). Each counts its open
//! connections against `max_connections` and gives a client `handshake_timeout_ms` from accept
//! to CONNECT; the maximum packet size is enforced by the codec from the fixed header on,
//! before a packet body is buffered.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::{ListenerKind, MqttListenerSection};
use crate::hub::Hub;

pub mod flush;
pub mod proxy_protocol;
pub mod quic;
pub mod quic_routes;
mod quic_streams;
mod tcp;
pub mod tls;
pub mod ws;

/// A listener that cannot start. Each names the listener and what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("listener {name}: cannot bind {addr}: {source}")]
    Bind { name: String, addr: SocketAddr, source: std::io::Error },
    #[error("listener {name}: the {what} file {path} is not usable: {message}")]
    File { name: String, what: &'static str, path: PathBuf, message: String },
    #[error("listener {name}: {message}")]
    Tls { name: String, message: String },
}

/// A started listener.
pub struct Bound {
    /// The address actually bound (the port is known even when `bind` asked for port 0).
    pub local: SocketAddr,
    pub task: tokio::task::JoinHandle<()>,
}

/// Binds MQTT over TCP on `addr` (the `[listeners] tcp` one); returns the bound address and
/// the accept task.
pub async fn tcp(
    hub: Arc<Hub>,
    name: Arc<str>,
    addr: SocketAddr,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let hub = hub.clone();
                    let info = crate::connection::PeerInfo::tcp(peer, name.clone());
                    tokio::spawn(crate::connection::serve(hub, stream, info));
                }
                Err(e) => {
                    // EMFILE and friends: log, back off briefly, keep accepting.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    });
    Ok((local, task))
}

/// Starts one `[[listeners.mqtt]]` listener. Certificate, key, CA and CRL files are read
/// here, so a bad file stops the start with an error naming it.
pub async fn spawn(hub: Arc<Hub>, cfg: &MqttListenerSection) -> Result<Bound, ListenerError> {
    let max_message = hub.config.mqtt.max_packet_size as usize;
    match cfg.kind {
        ListenerKind::Quic => quic::spawn(hub, cfg).await,
        ListenerKind::Tcp | ListenerKind::Ws | ListenerKind::Tls | ListenerKind::Wss => {
            let tls = match (&cfg.tls, cfg.kind) {
                // No ALPN: MQTT/TLS clients rarely offer one, and rustls would refuse a
                // client offering only protocols not in the list.
                (Some(t), ListenerKind::Tls | ListenerKind::Wss) => {
                    Some(Arc::new(tls::server_config(&cfg.name, t, &[], false)?))
                }
                _ => None,
            };
            tcp::spawn(hub, cfg, tls, max_message).await
        }
    }
}
