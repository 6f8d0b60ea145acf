//! What a member's connection and its world say to each other: the commands a
//! connection queues ([`WorldHandle`]), the frames the world queues back ([`Outbound`]),
//! why a join is refused, and what the control plane hears of worlds.

use bytes::Bytes;
use gaia_api::protocol::Encoding;
use tokio::sync::{mpsc, oneshot};

use crate::closing::Closing;
use crate::farewell::{Farewell, Leftovers};
use crate::world::MemberId;

/// Why a join was refused; the connection turns it into a close code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error("world is full ({0} players)")]
    WorldFull(usize),
    #[error("world has its maximum of {0} spectators")]
    SpectatorsFull(usize),
    #[error("server hosts its maximum of {0} worlds")]
    ServerFull(usize),
    #[error("server is shutting down")]
    ShuttingDown,
    /// Retryable through the allocator: the server drains, the world moved on, or its
    /// checkpoint could not be read.
    #[error("world unavailable here: {0}; allocate again")]
    Unavailable(String),
}

/// What a world sends a member's connection. As small as a frame (32 bytes: the rare
/// close is boxed), as every member's queue holds blocks of them.
#[derive(Debug)]
pub enum Outbound {
    Frame(Bytes),
    /// Write what came before, then close with this.
    Close(Box<Closing>),
}

const _: () = assert!(std::mem::size_of::<Outbound>() == std::mem::size_of::<Bytes>());

/// What the control plane must hear about worlds; sent in order by one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorldEvent {
    /// Loaded here and joined; `epoch` is the newest among its joins' tokens.
    Started {
        world_id: String,
        epoch: u64,
    },
    Ended(String),
}

pub(super) enum Cmd<A> {
    Join {
        member: MemberId,
        name: String,
        /// The world's epoch in the member's join token.
        epoch: u64,
        out: mpsc::Sender<Outbound>,
        encoding: Encoding,
        farewell: Farewell,
        reply: oneshot::Sender<Result<(), JoinError>>,
    },
    Leave {
        member: MemberId,
    },
    /// The member's connection dropped: it stays, away, until a resume or the grace ends.
    Park {
        member: MemberId,
    },
    /// A new connection takes back `member` (see [`ResumeConfig`]).
    Resume {
        member: MemberId,
        epoch: u64,
        out: mpsc::Sender<Outbound>,
        encoding: Encoding,
        farewell: Farewell,
        awaiting: Vec<u32>,
        reply: oneshot::Sender<Result<(), JoinError>>,
    },
    /// A read-only connection starts watching (see [`Rooms::spectate`]).
    Spectate {
        member: MemberId,
        out: mpsc::Sender<Outbound>,
        encoding: Encoding,
        farewell: Farewell,
        reply: oneshot::Sender<Result<(), JoinError>>,
    },
    Input {
        member: MemberId,
        seq: u32,
        action: A,
    },
}

/// A member's way into its world.
pub struct WorldHandle<A> {
    pub(super) member: MemberId,
    pub(super) tx: mpsc::Sender<Cmd<A>>,
    pub(super) leftovers: oneshot::Receiver<Leftovers>,
}

impl<A> WorldHandle<A> {
    /// Queues an input for the next tick; waits while the world's queue is full. False
    /// when the world has stopped.
    pub async fn input(&self, seq: u32, action: A) -> bool {
        self.tx.send(Cmd::Input { member: self.member, seq, action }).await.is_ok()
    }

    /// Leaves the world. Its inputs the world has not applied yet are dropped unapplied,
    /// and from then on it queues nothing more for this member. The returned receiver
    /// gets what the world still owes the member (see [`Farewell`]) once it is gone.
    pub async fn leave(self) -> oneshot::Receiver<Leftovers> {
        let _ = self.tx.send(Cmd::Leave { member: self.member }).await;
        self.leftovers
    }

    /// The connection dropped without a close: with resume on, the member stays away for
    /// the grace (its inputs already sent are applied, their results kept); else it leaves.
    pub async fn park(self) {
        let _ = self.tx.send(Cmd::Park { member: self.member }).await;
    }
}
