//! MQTT over WebSocket: the HTTP upgrade (path and `mqtt` subprotocol checked), and an
//! adapter that makes the WebSocket message stream a byte stream for the connection loop.
//!
//! MQTT packets travel in binary messages; one message may hold several packets or part of
//! one (MQTT 5.0 section 6), so the adapter just concatenates message payloads. A text
//! message is a protocol error and ends the connection.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Subprotocols accepted, in order of preference (`mqtt` per MQTT 5.0 section 6; `mqttv3.1`
/// as old clients send it).
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Why an upgrade was refused.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    #[error("the WebSocket upgrade failed: {0}")]
    Handshake(#[from] tokio_tungstenite::tungstenite::Error),
}

/// Performs the server side of the upgrade on `io`: the request path must be `path` and the
/// client must offer the `mqtt` subprotocol. `max_message` bounds one WebSocket message, in bytes.
pub async fn accept<S>(io: S, path: &str, max_message: usize) -> Result<WsIo<S>, WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut config = WebSocketConfig::default();
    config.max_message_size = Some(max_message);
    config.max_frame_size = Some(max_message);
    // Write each message at once: the connection loop writes whole batches of packets.
    config.write_buffer_size = 0;
    // The callback's signature is tungstenite's (`Callback`), large error type included.
    #[allow(clippy::result_large_err)]
    let check = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != path {
            return Err(refusal(StatusCode::NOT_FOUND, format!("MQTT over WebSocket is served at {path}")));
        }
        let offered: Vec<&str> = req
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let Some(chosen) = SUBPROTOCOLS.iter().find(|p| offered.contains(p)) else {
            return Err(refusal(StatusCode::BAD_REQUEST, "the WebSocket subprotocol must be mqtt".into()));
        };
        resp.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static(chosen));
        Ok(resp)
    };
    let ws = tokio_tungstenite::accept_hdr_async_with_config(io, check, Some(config)).await?;
    Ok(WsIo { ws, pending: Bytes::new() })
}

fn refusal(status: StatusCode, why: String) -> ErrorResponse {
    let mut r = ErrorResponse::new(Some(why));
    *r.status_mut() = status;
    r
}

/// A WebSocket connection seen as a byte stream: reads yield binary message payloads in
/// order, each write sends one binary message.
pub struct WsIo<S> {
    ws: WebSocketStream<S>,
    /// The unread rest of the last binary message.
    pending: Bytes,
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsIo<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending.split_to(n));
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                None | Some(Ok(Message::Close(_))) => return Poll::Ready(Ok(())),
                Some(Ok(Message::Binary(b))) => this.pending = b,
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "MQTT over WebSocket must use binary messages",
                    )))
                }
                // Ping (answered by tungstenite), pong, raw frames.
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsIo<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.ws).poll_ready(cx)).map_err(io::Error::other)?;
        Pin::new(&mut this.ws).start_send(Message::Binary(Bytes::copy_from_slice(buf))).map_err(io::Error::other)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws).poll_flush(cx).map_err(io::Error::other)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws).poll_close(cx).map_err(io::Error::other)
    }
}
