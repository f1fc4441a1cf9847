//! The socket's write half: server frames (unmasked, RFC 6455 §5.2) written
//! so that a write cut short can be finished later.
//!
//! fastwebsockets writes a frame straight to the socket, so dropping its
//! write future mid-frame (a timeout, a `select!`) leaves half a frame on the
//! wire, after which no close frame can be sent: the client only sees the
//! connection drop (1006). Here the frame in progress and how much of it has
//! gone out are kept in [`Wire`], and every await is a single cancel-safe
//! `write`, so the writer can stop waiting at any point and later finish the
//! frame (bounded) before it sends a close frame.

use std::io::{self, IoSlice};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Frame opcodes the gateway sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Text = 0x1,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

/// Longest frame header: 2 bytes plus a 64-bit length (servers never mask).
const MAX_HEAD: usize = 10;

/// The write half of a WebSocket and the frame it is writing, if any.
pub struct Wire<W> {
    io: W,
    head: [u8; MAX_HEAD],
    head_len: usize,
    payload: Bytes,
    /// Bytes of `head` then `payload` already written.
    sent: usize,
    /// A close frame was started: nothing may follow it.
    closing: bool,
}

impl<W: AsyncWrite + Unpin> Wire<W> {
    pub fn new(io: W) -> Self {
        Self {
            io,
            head: [0; MAX_HEAD],
            head_len: 0,
            payload: Bytes::new(),
            sent: 0,
            closing: false,
        }
    }

    /// Whether a close frame has been started (it may not be finished).
    pub fn close_started(&self) -> bool {
        self.closing
    }

    /// Whether a frame has been started and not yet fully written.
    pub fn in_progress(&self) -> bool {
        self.sent < self.head_len + self.payload.len()
    }

    /// Starts writing a final frame. The frame in progress, if any, must have
    /// been finished first ([`Wire::finish`]); a frame started over an
    /// unfinished one would corrupt the stream, and nothing may follow a close
    /// frame, so both are refused.
    pub fn start(&mut self, op: Op, payload: Bytes) -> io::Result<()> {
        if self.in_progress() {
            return Err(io::Error::other("a frame is still being written"));
        }
        if self.closing {
            return Err(io::Error::other("no frame may follow a close frame"));
        }
        self.closing = op == Op::Close;
        self.head_len = head(op, payload.len(), &mut self.head);
        self.payload = payload;
        self.sent = 0;
        Ok(())
    }

    /// Writes what is left of the frame in progress.
    ///
    /// Cancel-safe: dropping the future loses nothing; calling `finish` again
    /// carries on where the last call stopped.
    pub async fn finish(&mut self) -> io::Result<()> {
        while self.in_progress() {
            let n = if self.sent < self.head_len {
                let parts = [
                    IoSlice::new(&self.head[self.sent..self.head_len]),
                    IoSlice::new(&self.payload),
                ];
                self.io.write_vectored(&parts).await?
            } else {
                self.io
                    .write(&self.payload[self.sent - self.head_len..])
                    .await?
            };
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.sent += n;
        }
        // Let go of a payload shared with other connections.
        self.payload = Bytes::new();
        self.head_len = 0;
        self.sent = 0;
        Ok(())
    }

    /// Starts and finishes a frame (after the one in progress, if any).
    pub async fn send(&mut self, op: Op, payload: Bytes) -> io::Result<()> {
        self.finish().await?;
        self.start(op, payload)?;
        self.finish().await
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        self.io.flush().await
    }
}

/// A close frame's payload: the code, big-endian, then the reason.
pub fn close_payload(code: u16, reason: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(2 + reason.len());
    b.put_u16(code);
    b.put_slice(reason.as_bytes());
    b.freeze()
}

/// Writes the header of a final, unmasked frame into `out`; returns its
/// length.
fn head(op: Op, len: usize, out: &mut [u8; MAX_HEAD]) -> usize {
    out[0] = 0x80 | op as u8;
    match len {
        0..=125 => {
            out[1] = len as u8;
            2
        }
        126..=0xFFFF => {
            out[1] = 126;
            out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        }
        _ => {
            out[1] = 127;
            out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use fastwebsockets::{Frame, OpCode, Payload};
    use tokio::io::AsyncReadExt;

    use super::*;

    /// The same frame as fastwebsockets writes it, for comparison.
    fn reference(op: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut frame = Frame::new(true, op, None, Payload::Borrowed(payload));
        let mut buf = Vec::new();
        frame.write(&mut buf).to_vec()
    }

    #[tokio::test]
    async fn frames_of_every_length_class_match_the_reference() {
        for len in [0usize, 1, 125, 126, 1000, 65_535, 65_536, 70_000] {
            let payload = Bytes::from(vec![b'x'; len]);
            let (a, mut b) = tokio::io::duplex(1 << 20);
            let mut w = Wire::new(a);
            w.send(Op::Text, payload.clone())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            drop(w);
            let mut got = Vec::new();
            b.read_to_end(&mut got)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(got, reference(OpCode::Text, &payload), "length {len}");
        }
    }

    #[tokio::test]
    async fn a_frame_cut_short_is_finished_before_the_close() {
        // A peer that reads nothing yet: only 64 bytes fit.
        let (a, mut b) = tokio::io::duplex(64);
        let mut w = Wire::new(a);
        let payload = Bytes::from(vec![b'y'; 1_000]);
        w.start(Op::Text, payload.clone())
            .unwrap_or_else(|e| panic!("{e}"));
        let cut = tokio::time::timeout(Duration::from_millis(20), w.finish()).await;
        assert!(cut.is_err(), "the write should have blocked");
        assert!(w.in_progress());
        // Nothing may start over the unfinished frame.
        assert!(w.start(Op::Ping, Bytes::new()).is_err());

        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            b.read_to_end(&mut got).await.map(|_| got)
        });
        w.send(Op::Close, close_payload(1008, "slow consumer"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!w.in_progress());
        assert!(w.close_started());
        assert!(w.send(Op::Text, Bytes::new()).await.is_err());
        drop(w);
        let got = reader.await.ok().and_then(|r| r.ok()).unwrap_or_default();
        let mut want = reference(OpCode::Text, &payload);
        want.extend(reference(
            OpCode::Close,
            &close_payload(1008, "slow consumer"),
        ));
        assert_eq!(got, want);
    }
}
