//! What a world still owes a member's connection when it lets the member go.
//!
//! Input results a world could not queue (the member was behind, or not welcomed yet)
//! are held with the member. Whichever way the member leaves (its connection's `Leave`,
//! too slow, replaced by a newer connection, the world stopping), dropping it sends
//! those results, and why it was let go, to the connection, which writes them before
//! its close frame. That keeps the protocol's rule on every orderly close: every input
//! the world applied has had its result.

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::closing::Closing;

/// What the connection receives once its member is gone.
#[derive(Debug, Default)]
pub struct Leftovers {
    /// Encoded `InputResult` frames, in order, that never reached the member's queue.
    pub held: Vec<Bytes>,
    /// The world's reason for letting the member go, if it had one.
    pub closing: Option<Closing>,
}

/// The world's side: held results and a reason, sent when dropped.
#[derive(Debug)]
pub struct Farewell {
    to: Option<oneshot::Sender<Leftovers>>,
    /// Encoded results and their inputs' seqs.
    pub held: Vec<(u32, Bytes)>,
    pub closing: Option<Closing>,
}

impl Farewell {
    /// A farewell for one connection, and the receiver that connection waits on.
    pub fn channel() -> (Self, oneshot::Receiver<Leftovers>) {
        let (to, from) = oneshot::channel();
        (Self { to: Some(to), held: Vec::new(), closing: None }, from)
    }
}

impl Drop for Farewell {
    fn drop(&mut self) {
        if let Some(to) = self.to.take() {
            let held = std::mem::take(&mut self.held).into_iter().map(|(_, frame)| frame).collect();
            let _ = to.send(Leftovers { held, closing: self.closing.take() });
        }
    }
}
