//! The bounded outbound queue of one connection: the frames and commands its
//! writer still has to send.
//!
//! Invariant: the queue never holds more than its capacity. A push that does
//! not fit fails at once ([`Full`]) and the caller treats the client as a slow
//! reader, so a client that stops reading can never grow the gateway's memory.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::Notify;

/// A frame or command for a connection's writer.
#[derive(Debug)]
pub enum Out {
    /// A text frame (JSON), possibly shared by many connections.
    Text(Bytes),
    /// A pong answering the client's ping.
    Pong(Bytes),
    /// Echo of the client's close frame (raw payload); the writer stops after.
    CloseEcho(Bytes),
    /// Close with a code and reason; the writer stops after.
    Close(u16, &'static str),
}

/// The bounded outbound queue of one connection. It allocates nothing while
/// empty, so an idle connection holds no queue memory, and gives its buffer
/// back once a burst has drained.
#[derive(Debug)]
pub struct Outbox {
    items: Mutex<VecDeque<Out>>,
    ready: Notify,
    cap: usize,
}

/// The queue already holds `cap` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl Outbox {
    pub fn new(cap: usize) -> Self {
        Self {
            items: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
            cap,
        }
    }

    pub fn push(&self, out: Out) -> Result<(), Full> {
        {
            let Ok(mut q) = self.items.lock() else {
                return Err(Full);
            };
            if q.len() >= self.cap {
                return Err(Full);
            }
            q.push_back(out);
        }
        self.ready.notify_one();
        Ok(())
    }

    /// Queues a connection's last frame (its close) even when the queue is
    /// full: at most one frame past the cap, once per connection.
    pub fn push_last(&self, out: Out) {
        if let Ok(mut q) = self.items.lock() {
            q.push_back(out);
        }
        self.ready.notify_one();
    }

    /// The next frame, waiting for one. Cancel-safe: a frame is only taken
    /// when this returns it.
    pub async fn pop(&self) -> Out {
        loop {
            if let Ok(mut q) = self.items.lock()
                && let Some(out) = q.pop_front()
            {
                if q.is_empty() && q.capacity() > 16 {
                    *q = VecDeque::new();
                }
                return out;
            }
            // A push between the check and here leaves a permit behind, so
            // no wake-up is lost.
            self.ready.notified().await;
        }
    }

    pub fn len(&self) -> usize {
        self.items.lock().map(|q| q.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn the_outbox_hands_frames_out_in_order_and_frees_its_buffer() {
        let o = Arc::new(Outbox::new(64));
        for i in 0..40u8 {
            assert!(o.push(Out::Text(Bytes::from(vec![i]))).is_ok());
        }
        for i in 0..40u8 {
            match o.pop().await {
                Out::Text(b) => assert_eq!(b.as_ref(), [i]),
                other => panic!("{other:?}"),
            }
        }
        assert!(o.is_empty());
        assert_eq!(o.items.lock().map(|q| q.capacity()).unwrap_or(1), 0);
        // A frame pushed while the writer waits wakes it.
        let waiter = {
            let o = o.clone();
            tokio::spawn(async move { o.pop().await })
        };
        tokio::task::yield_now().await;
        assert!(o.push(Out::Text(Bytes::from_static(b"late"))).is_ok());
        assert!(matches!(waiter.await, Ok(Out::Text(b)) if b.as_ref() == b"late"));
    }

    #[test]
    fn a_full_outbox_refuses_the_frame() {
        let o = Outbox::new(2);
        assert_eq!(o.push(Out::Pong(Bytes::new())), Ok(()));
        assert_eq!(o.push(Out::Pong(Bytes::new())), Ok(()));
        assert_eq!(o.push(Out::Pong(Bytes::new())), Err(Full));
        assert_eq!(o.len(), 2);
        o.push_last(Out::Close(1012, "bye"));
        assert_eq!(o.len(), 3);
    }
}
