//! What a world asks for and what it gets back. These types live in world state (a world
//! keeps the operations it has in flight, and checkpoints hold them), so they encode with
//! bincode as well as serde.

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

/// An operation's id, chosen by the world that starts it; unique within that world.
pub type OpId = u64;

/// One thing a world wants done outside its tick.
#[derive(Debug, Clone, PartialEq, Encode, Decode, Serialize, Deserialize)]
pub struct Operation {
    pub id: OpId,
    pub request: Request,
    /// From the start to the outcome, queue and retries included. Past it the outcome is
    /// [`OpError::TimedOut`].
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Encode, Decode, Serialize, Deserialize)]
pub enum Request {
    /// A chat completion from the configured model.
    Chat(ChatRequest),
    /// An embedding of a text, for similarity search over memories.
    Embed(EmbedRequest),
    Http(HttpRequest),
    /// A game-defined job, run by the provider the game registered for [`Kind::Job`].
    Job(JobRequest),
    /// Keep a memory of an agent (in the server's memory store).
    Remember(RememberRequest),
    /// An agent's memories nearest to an embedding.
    Recall(RecallRequest),
}

#[derive(Debug, Clone, PartialEq, Encode, Decode, Serialize, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    /// Longest answer, in tokens; the provider's default when unset.
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct EmbedRequest {
    pub input: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct HttpRequest {
    /// `GET`, `POST`, ...; only the idempotent methods are retried.
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
pub struct JobRequest {
    /// Which of the game's jobs.
    pub name: String,
    pub payload: Vec<u8>,
    /// Whether running it twice does no harm: only then is it retried, or run again
    /// after a restore.
    pub idempotent: bool,
}

/// One memory of one agent. Stored once: the same (world, agent, id) again stores
/// nothing, so it is safe to retry and to run again after a restore.
#[derive(Debug, Clone, PartialEq, Encode, Decode, Serialize, Deserialize)]
pub struct RememberRequest {
    pub world_id: String,
    pub agent: u32,
    /// Chosen by the world, unique per agent; later memories have larger ids. (No time:
    /// a world has no clock; the memory lane stamps when it stored the memory.)
    pub id: u64,
    pub text: String,
    pub importance: f32,
    pub embedding: Vec<f32>,
}

#[derive(Debug, Clone, PartialEq, Encode, Decode, Serialize, Deserialize)]
pub struct RecallRequest {
    pub world_id: String,
    pub agent: u32,
    /// The embedding to compare memories with.
    pub query: Vec<f32>,
    /// How many memories, nearest first.
    pub k: u32,
}

/// A memory a recall found.
#[derive(Debug, Clone, PartialEq, Encode, Decode, Serialize, Deserialize)]
pub struct RecalledMemory {
    pub id: u64,
    /// When it was stored, Unix milliseconds.
    pub at_ms: u64,
    pub text: String,
    pub importance: f32,
    /// Cosine similarity to the query, -1 to 1.
    pub score: f32,
}

/// What each kind of request answers.
#[derive(Debug, Clone, PartialEq, Encode, Decode, Serialize, Deserialize)]
pub enum Response {
    Chat {
        content: String,
    },
    Embedding {
        vector: Vec<f32>,
    },
    Http {
        status: u16,
        body: Vec<u8>,
    },
    Job {
        payload: Vec<u8>,
    },
    /// A [`Request::Remember`] is stored.
    Remembered,
    /// A [`Request::Recall`]'s memories, nearest first.
    Memories {
        memories: Vec<RecalledMemory>,
    },
}

/// Why an operation has no response.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize, thiserror::Error)]
pub enum OpError {
    #[error("timed out after {after_ms} ms")]
    TimedOut { after_ms: u64 },
    /// The provider refused or failed, after the retries that were safe.
    #[error("failed: {reason}")]
    Failed { reason: String },
    /// The lane's queue was full: nothing was sent.
    #[error("overloaded: too many {kind} operations waiting")]
    Overloaded { kind: String },
    /// No provider is configured for this kind of request.
    #[error("no provider for {kind} operations")]
    Unsupported { kind: String },
    /// It was in flight when the world stopped, and is not safe to run again.
    #[error("interrupted when the world stopped; not run again, as it may not be repeated")]
    Interrupted,
}

pub type Outcome = Result<Response, OpError>;

/// An operation's outcome, as the world gets it.
#[derive(Debug, Clone, PartialEq)]
pub struct Completed {
    pub id: OpId,
    pub outcome: Outcome,
}

/// The kinds of request, one lane each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Chat,
    Embed,
    Http,
    Job,
    /// Remember and recall: the server's memory store.
    Memory,
}

impl Kind {
    pub const ALL: [Kind; 5] = [Kind::Chat, Kind::Embed, Kind::Http, Kind::Job, Kind::Memory];

    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Chat => "chat",
            Kind::Embed => "embed",
            Kind::Http => "http",
            Kind::Job => "job",
            Kind::Memory => "memory",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl Request {
    pub fn kind(&self) -> Kind {
        match self {
            Request::Chat(_) => Kind::Chat,
            Request::Embed(_) => Kind::Embed,
            Request::Http(_) => Kind::Http,
            Request::Job(_) => Kind::Job,
            Request::Remember(_) | Request::Recall(_) => Kind::Memory,
        }
    }

    /// Whether sending it again can do no harm: model calls, embeddings and recalls (they
    /// change nothing), remembering (stored once by its id), HTTP's idempotent methods,
    /// jobs that say so.
    pub fn retry_safe(&self) -> bool {
        match self {
            Request::Chat(_) | Request::Embed(_) => true,
            Request::Http(h) => {
                ["GET", "HEAD", "PUT", "DELETE", "OPTIONS"].iter().any(|m| h.method.eq_ignore_ascii_case(m))
            }
            Request::Job(j) => j.idempotent,
            Request::Remember(_) | Request::Recall(_) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_place_and_label_and_memories_are_safe_to_repeat() {
        for (i, kind) in Kind::ALL.into_iter().enumerate() {
            assert_eq!(kind.index(), i, "{kind:?}: lanes are indexed by ALL's order");
        }
        let labels: std::collections::HashSet<&str> = Kind::ALL.iter().map(|k| k.label()).collect();
        assert_eq!(labels.len(), Kind::ALL.len());
        let remember = Request::Remember(RememberRequest {
            world_id: "w".into(),
            agent: 1,
            id: 1,
            text: "x".into(),
            importance: 1.0,
            embedding: vec![1.0],
        });
        let recall = Request::Recall(RecallRequest { world_id: "w".into(), agent: 1, query: vec![1.0], k: 3 });
        for request in [remember, recall] {
            assert_eq!(request.kind(), Kind::Memory);
            assert_eq!(request.kind().label(), "memory");
            assert!(request.retry_safe());
        }
    }
}
