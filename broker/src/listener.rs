//! Listeners: accept loops that hand each connection to `connection::serve`.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::hub::Hub;

/// Binds MQTT over TCP on `addr`; returns the bound address and the accept task.
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
