//! The TCP-based listeners (`tcp`, `tls`, `ws`, `wss`): accept, connection limit, then per
//! connection the layers the kind asks for (PROXY header, TLS, WebSocket upgrade), all within
//! the handshake timeout, then `connection::serve_until` with the same deadline for CONNECT.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::flush::{AutoFlush, Prefixed};
use super::proxy_protocol::{self, ProxyError, ProxyHeader};
use super::{tls, ws, Bound, ListenerError};
use crate::config::{ListenerKind, MqttListenerSection, PeerCertAsUsername};
use crate::connection::{CertIdentity, PeerInfo, Transport};
use crate::hub::Hub;

/// What every connection of one listener needs.
struct Setup {
    name: Arc<str>,
    kind: ListenerKind,
    proxy_protocol: bool,
    path: String,
    handshake_timeout: Duration,
    peer_cert_as_username: PeerCertAsUsername,
    tls: Option<tokio_rustls::TlsAcceptor>,
    max_message: usize,
}

pub(super) async fn spawn(
    hub: Arc<Hub>,
    cfg: &MqttListenerSection,
    tls: Option<Arc<rustls::ServerConfig>>,
    max_message: usize,
) -> Result<Bound, ListenerError> {
    let addr = cfg.bind_addr();
    let bind_err = |source| ListenerError::Bind { name: cfg.name.clone(), addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
    let local = listener.local_addr().map_err(bind_err)?;
    let setup = Arc::new(Setup {
        name: cfg.name.as_str().into(),
        kind: cfg.kind,
        proxy_protocol: cfg.proxy_protocol,
        path: cfg.path.clone(),
        handshake_timeout: Duration::from_millis(cfg.handshake_timeout_ms),
        peer_cert_as_username: cfg.peer_cert_as_username,
        tls: tls.map(tokio_rustls::TlsAcceptor::from),
        // A WebSocket message carries at most one packet's worth, plus framing slack.
        max_message: max_message.saturating_add(1024),
    });
    let limit = Arc::new(Semaphore::new(cfg.max_connections));
    let max_connections = cfg.max_connections;
    let task = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, addr)) => {
                    let Ok(permit) = limit.clone().try_acquire_owned() else {
                        tracing::warn!(listener = %setup.name, %addr, max_connections, "connection limit reached; connection closed");
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let (hub, setup) = (hub.clone(), setup.clone());
                    tokio::spawn(async move {
                        handle(hub, setup, stream, addr).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    tracing::warn!(listener = %setup.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    Ok(Bound { local, task })
}

/// Why a connection was closed before MQTT.
#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    #[error("PROXY header refused: {0}")]
    Proxy(#[from] ProxyError),
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("{0}")]
    Ws(#[from] ws::WsError),
    #[error("the connection closed during the handshake")]
    Closed,
    #[error("no handshake within the handshake timeout")]
    Timeout,
}

async fn handle(hub: Arc<Hub>, setup: Arc<Setup>, mut stream: TcpStream, socket_addr: std::net::SocketAddr) {
    let deadline = Instant::now() + setup.handshake_timeout;
    let transport = match setup.kind {
        ListenerKind::Tls => Transport::Tls,
        ListenerKind::Ws => Transport::Ws,
        ListenerKind::Wss => Transport::Wss,
        _ => Transport::Tcp,
    };
    let mut peer =
        PeerInfo { addr: socket_addr, listener: setup.name.clone(), transport, cert: None, cert_username: None };
    let rest = if setup.proxy_protocol {
        match timed(deadline, read_proxy_header(&mut stream)).await {
            Ok((header, rest)) => {
                apply_proxy_header(&mut peer, header, setup.peer_cert_as_username);
                rest
            }
            Err(e) => return refuse(&setup, socket_addr, e),
        }
    } else {
        BytesMut::new()
    };
    let io = Prefixed::new(rest, stream);
    match (setup.kind, &setup.tls) {
        (ListenerKind::Tcp, _) => crate::connection::serve_until(hub, io, peer, deadline).await,
        (ListenerKind::Ws, _) => {
            match timed(deadline, async { Ok(ws::accept(io, &setup.path, setup.max_message).await?) }).await {
                Ok(ws) => crate::connection::serve_until(hub, AutoFlush::new(ws), peer, deadline).await,
                Err(e) => refuse(&setup, peer.addr, e),
            }
        }
        (ListenerKind::Tls | ListenerKind::Wss, Some(acceptor)) => {
            let tls = match timed(deadline, async { acceptor.accept(io).await.map_err(HandshakeError::Tls) }).await {
                Ok(t) => t,
                Err(e) => return refuse(&setup, peer.addr, e),
            };
            peer.cert = tls::identity(tls.get_ref().1.peer_certificates());
            peer.cert_username = tls::cert_username(peer.cert.as_ref(), setup.peer_cert_as_username);
            if setup.kind == ListenerKind::Tls {
                crate::connection::serve_until(hub, AutoFlush::new(tls), peer, deadline).await;
            } else {
                match timed(deadline, async {
                    Ok(ws::accept(AutoFlush::new(tls), &setup.path, setup.max_message).await?)
                })
                .await
                {
                    Ok(ws) => crate::connection::serve_until(hub, AutoFlush::new(ws), peer, deadline).await,
                    Err(e) => refuse(&setup, peer.addr, e),
                }
            }
        }
        // `spawn` builds an acceptor for every TLS kind; QUIC is not TCP-based.
        (ListenerKind::Tls | ListenerKind::Wss | ListenerKind::Quic, _) => {
            tracing::error!(listener = %setup.name, "listener without TLS settings; connection closed")
        }
    }
}

async fn timed<T>(
    deadline: Instant,
    f: impl std::future::Future<Output = Result<T, HandshakeError>>,
) -> Result<T, HandshakeError> {
    tokio::time::timeout_at(deadline, f).await.unwrap_or(Err(HandshakeError::Timeout))
}

fn refuse(setup: &Setup, addr: std::net::SocketAddr, e: HandshakeError) {
    tracing::info!(listener = %setup.name, peer = %addr, error = %e, "connection refused before MQTT");
}

/// Reads a PROXY header off `stream`; returns it and the bytes read past it.
async fn read_proxy_header<S: AsyncRead + Unpin>(stream: &mut S) -> Result<(ProxyHeader, BytesMut), HandshakeError> {
    let mut buf = BytesMut::with_capacity(256);
    loop {
        if let Some((header, len)) = proxy_protocol::parse(&buf)? {
            let _ = buf.split_to(len);
            return Ok((header, buf));
        }
        if stream.read_buf(&mut buf).await.map_err(|_| HandshakeError::Closed)? == 0 {
            return Err(HandshakeError::Closed);
        }
    }
}

/// The PROXY header's source becomes the peer address; its client-certificate CN the peer's
/// certificate identity.
fn apply_proxy_header(peer: &mut PeerInfo, header: ProxyHeader, mode: PeerCertAsUsername) {
    if let Some(source) = header.source {
        tracing::debug!(listener = %peer.listener, balancer = %peer.addr, client = %source, "PROXY header");
        peer.addr = source;
    }
    if let Some(cn) = header.ssl_cn {
        let id = CertIdentity { common_name: Some(cn), subject_alt_names: Vec::new() };
        peer.cert_username = tls::cert_username(Some(&id), mode);
        peer.cert = Some(id);
    }
}
