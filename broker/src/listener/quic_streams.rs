//! The streams of one QUIC connection presented to the session layer as one byte stream.
//!
//! A reader task per client-opened bidirectional stream frames MQTT packets (the maximum
//! packet size checked from the fixed header on) and passes whole packets, in arrival order,
//! to [`QuicStreams`]'s read side; writes are cut into packets and each goes, by
//! [`Routes`](super::quic_routes::Routes), to a writer task of the stream it belongs on. The
//! connection ends when the control stream (the first one) ends.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures::task::AtomicWaker;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::quic_routes::{frame, Frame, Routes, StreamIdx};

/// Bytes queued towards the client's streams before writes wait.
const MAX_QUEUED: usize = 4 << 20;
/// Packets read ahead per connection before the readers wait (QUIC flow control then
/// holds the client back).
const READ_AHEAD: usize = 256;

/// Streams one connection may open over its lifetime (the control stream included). Each
/// keeps a writer task until the connection ends, so without a bound a client opening and
/// closing streams would grow them without limit; EMQX-style clients open a handful.
const MAX_STREAMS: StreamIdx = 1024;

/// State the writer tasks share with [`QuicStreams`].
struct Shared {
    routes: Mutex<Routes>,
    queued: AtomicUsize,
    drained: AtomicWaker,
}

/// One QUIC connection's streams as an `AsyncRead + AsyncWrite` for `connection::serve`.
pub struct QuicStreams {
    shared: Arc<Shared>,
    /// Whole packets from the readers; `None` when the control stream ended.
    rx: mpsc::Receiver<Option<Bytes>>,
    reading: Bytes,
    writing: BytesMut,
    writers: Vec<mpsc::UnboundedSender<Bytes>>,
    new_writers: mpsc::UnboundedReceiver<(StreamIdx, mpsc::UnboundedSender<Bytes>)>,
    acceptor: JoinHandle<()>,
}

impl QuicStreams {
    /// Takes the control stream (already accepted) and accepts further streams of `conn`.
    pub fn new(
        conn: quinn::Connection,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        max_packet: u32,
    ) -> QuicStreams {
        let shared = Arc::new(Shared {
            routes: Mutex::new(Routes::default()),
            queued: AtomicUsize::new(0),
            drained: AtomicWaker::new(),
        });
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        let (new_tx, new_writers) = mpsc::unbounded_channel();
        let control = writer(shared.clone(), send);
        tokio::spawn(read_stream(shared.clone(), 0, recv, tx.clone(), max_packet));
        let acceptor = {
            let shared = shared.clone();
            tokio::spawn(async move {
                let mut next: StreamIdx = 1;
                while let Ok((send, recv)) = conn.accept_bi().await {
                    if next >= MAX_STREAMS {
                        tracing::info!(remote = %conn.remote_address(), "QUIC client opened more than {MAX_STREAMS} streams; closing");
                        conn.close(0u32.into(), b"too many streams");
                        break;
                    }
                    // The writer is known before the first packet of the stream is read.
                    if new_tx.send((next, writer(shared.clone(), send))).is_err() {
                        break;
                    }
                    tokio::spawn(read_stream(shared.clone(), next, recv, tx.clone(), max_packet));
                    next += 1;
                }
            })
        };
        QuicStreams {
            shared,
            rx,
            reading: Bytes::new(),
            writing: BytesMut::new(),
            writers: vec![control],
            new_writers,
            acceptor,
        }
    }

    /// Routes every whole packet in `writing` to its stream's writer.
    fn route(&mut self) {
        while let Ok((idx, w)) = self.new_writers.try_recv() {
            if self.writers.len() <= idx {
                self.writers.resize_with(idx + 1, || mpsc::unbounded_channel().0);
            }
            self.writers[idx] = w;
        }
        while let Frame::Packet(len) = frame(&self.writing, u32::MAX) {
            let packet = self.writing.split_to(len).freeze();
            let idx = self.shared.routes.lock().outbound(&packet);
            self.shared.queued.fetch_add(packet.len(), Ordering::AcqRel);
            // A stream the client reset, or all closed at shutdown: the packet is dropped.
            let Some(target) = self.writers.get(idx).or(self.writers.first()) else {
                self.shared.queued.fetch_sub(packet.len(), Ordering::AcqRel);
                continue;
            };
            if let Err(e) = target.send(packet) {
                self.shared.queued.fetch_sub(e.0.len(), Ordering::AcqRel);
            }
        }
    }
}

impl Drop for QuicStreams {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

/// Spawns the writer task of one stream; returns its queue.
fn writer(shared: Arc<Shared>, mut send: quinn::SendStream) -> mpsc::UnboundedSender<Bytes> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    tokio::spawn(async move {
        let mut failed = false;
        while let Some(b) = rx.recv().await {
            if !failed && send.write_all(&b).await.is_err() {
                failed = true;
            }
            shared.queued.fetch_sub(b.len(), Ordering::AcqRel);
            shared.drained.wake();
        }
        let _ = send.finish();
    });
    tx
}

/// Reads packets off one stream into the connection's queue. The control stream's end is
/// the connection's end.
async fn read_stream(
    shared: Arc<Shared>,
    idx: StreamIdx,
    mut recv: quinn::RecvStream,
    tx: mpsc::Sender<Option<Bytes>>,
    max_packet: u32,
) {
    let mut buf = BytesMut::with_capacity(8 * 1024);
    'read: loop {
        loop {
            match frame(&buf, max_packet) {
                Frame::Incomplete => break,
                Frame::Packet(len) => {
                    let packet = buf.split_to(len).freeze();
                    shared.routes.lock().inbound(idx, &packet);
                    if tx.send(Some(packet)).await.is_err() {
                        return;
                    }
                }
                Frame::Refused(header) => {
                    // The session layer sees the oversized header and closes with 0x95.
                    let _ = tx.send(Some(buf.split_to(header).freeze())).await;
                    break 'read;
                }
            }
        }
        buf.reserve(4096);
        match recv.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    if idx == 0 {
        let _ = tx.send(None).await;
    }
}

impl AsyncRead for QuicStreams {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.reading.is_empty() {
            match this.rx.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Some(b))) => this.reading = b,
                Poll::Ready(Some(None) | None) => return Poll::Ready(Ok(())),
            }
        }
        let n = this.reading.len().min(buf.remaining());
        buf.put_slice(&this.reading[..n]);
        this.reading.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for QuicStreams {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.shared.queued.load(Ordering::Acquire) > MAX_QUEUED {
            this.shared.drained.register(cx.waker());
            if this.shared.queued.load(Ordering::Acquire) > MAX_QUEUED {
                return Poll::Pending;
            }
        }
        this.writing.extend_from_slice(buf);
        this.route();
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Finishes every stream once its queue is written.
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.route();
        this.writers.clear();
        Poll::Ready(Ok(()))
    }
}
