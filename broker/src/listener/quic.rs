//! MQTT over QUIC (quinn, ALPN `mqtt`, TLS 1.3 only, 0-RTT accepted).
//!
//! The first bidirectional stream the client opens carries the MQTT connection (EMQX's
//! single-stream mode) and is its control stream; further client-opened streams carry
//! PUBLISH and SUBSCRIBE with their acknowledgements and deliveries (EMQX's multi-stream
//! mode; see `quic_streams.rs` and `quic_routes.rs`). The QUIC connection may move to a new client address (migration):
//! quinn validates the new path and the MQTT session goes on; `PeerInfo::addr` stays the
//! address the connection started from.

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicServerConfig;
use rustls::pki_types::CertificateDer;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::quic_streams::QuicStreams;
use super::{tls, Bound, ListenerError};
use crate::config::MqttListenerSection;
use crate::connection::{PeerInfo, Transport};
use crate::hub::Hub;

/// The ALPN protocol id of MQTT over QUIC.
pub const ALPN: &[u8] = b"mqtt";
/// The server sends QUIC keep-alives this often, so that an MQTT connection idle between
/// client keepalives (up to `mqtt.max_keepalive`) outlives QUIC's idle timeout.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

pub(super) async fn spawn(hub: Arc<Hub>, cfg: &MqttListenerSection) -> Result<Bound, ListenerError> {
    let tls_err = |message: String| ListenerError::Tls { name: cfg.name.clone(), message };
    let t = cfg.tls.as_ref().ok_or_else(|| tls_err("a quic listener needs a tls section".into()))?;
    let crypto = tls::server_config(&cfg.name, t, &[ALPN], true)?;
    let crypto = QuicServerConfig::try_from(crypto).map_err(|e| tls_err(format!("QUIC needs TLS 1.3 suites: {e}")))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(KEEP_ALIVE));
    server.transport_config(Arc::new(transport));
    server.migration(true);
    let addr = cfg.bind_addr();
    let endpoint = quinn::Endpoint::server(server, addr).map_err(|source| ListenerError::Bind {
        name: cfg.name.clone(),
        addr,
        source,
    })?;
    let local = endpoint.local_addr().map_err(|source| ListenerError::Bind { name: cfg.name.clone(), addr, source })?;
    let name: Arc<str> = cfg.name.as_str().into();
    let limit = Arc::new(Semaphore::new(cfg.max_connections));
    let handshake_timeout = Duration::from_millis(cfg.handshake_timeout_ms);
    let mode = cfg.peer_cert_as_username;
    let max_connections = cfg.max_connections;
    let task = tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                tracing::warn!(listener = %name, peer = %incoming.remote_address(), max_connections, "connection limit reached; connection refused");
                incoming.refuse();
                continue;
            };
            let (hub, name) = (hub.clone(), name.clone());
            tokio::spawn(async move {
                let deadline = Instant::now() + handshake_timeout;
                let addr = incoming.remote_address();
                let conn = match tokio::time::timeout_at(deadline, incoming).await {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => {
                        tracing::info!(listener = %name, peer = %addr, error = %e, "QUIC handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(listener = %name, peer = %addr, "no QUIC handshake within the handshake timeout");
                        return;
                    }
                };
                let (send, recv) = match tokio::time::timeout_at(deadline, conn.accept_bi()).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::info!(listener = %name, peer = %addr, error = %e, "QUIC connection closed before a stream");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(listener = %name, peer = %addr, "no QUIC stream within the handshake timeout");
                        conn.close(0u32.into(), b"handshake timeout");
                        return;
                    }
                };
                let chain = conn.peer_identity().and_then(|i| i.downcast::<Vec<CertificateDer<'static>>>().ok());
                let cert = tls::identity(chain.as_deref().map(Vec::as_slice));
                let cert_username = tls::cert_username(cert.as_ref(), mode);
                let peer = PeerInfo { addr, listener: name, transport: Transport::Quic, cert, cert_username };
                let max_packet = hub.config.mqtt.max_packet_size;
                let streams = QuicStreams::new(conn.clone(), send, recv, max_packet);
                crate::connection::serve_until(hub, streams, peer, deadline).await;
                // The stream is finished; give the client a moment to read the rest and close.
                let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
                conn.close(0u32.into(), b"");
                drop(permit);
            });
        }
    });
    Ok(Bound { local, task })
}
