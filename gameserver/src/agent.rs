//! The town's agents: bots that think through a language model, as AI Town's do.
//!
//! An agent is a bot with a [`Mind`]: an identity, its memories, and at most one
//! operation in flight (AI Town's rule: one thing at a time, each bounded by a timeout,
//! [`THINK_TIMEOUT_MS`]). What it says in a conversation, its answer to a player who talks
//! to it, and the summary it keeps of each conversation are chat completions; a summary
//! is then embedded and kept as a memory. A prompt carries the agent's identity and the
//! memories it recalls about whom it talks to ([`Mind::recall`]). Everything here is pure:
//! the town starts the operations ([`crate::town::Town`]), the runtime runs them, and
//! their outcomes come back as `complete` calls. A failed or timed-out call never stalls
//! the town: the agent falls back to its scripted line, or keeps no memory.

use bincode::{Decode, Encode};
use gaia_api::town::EntityId;
use gaia_ops::{ChatMessage, ChatRequest, EmbedRequest, OpId, Operation, Request, Role};

/// How long an agent waits for the model (AI Town's action timeout).
pub const THINK_TIMEOUT_MS: u64 = 120_000;
/// Memories an agent keeps; the oldest go first.
pub const MAX_MEMORIES: usize = 32;
/// Memories a prompt carries.
const RECALLED: usize = 3;
/// Longest answer asked of the model, in tokens.
const MAX_TOKENS: u32 = 60;

/// Who the agents are, in turn.
const IDENTITIES: [&str; 8] = [
    "the baker, who is up before dawn and knows everyone's order",
    "a retired sailor who tells stories about the harbour",
    "the town's young librarian, curious about everything",
    "a gardener who worries about the weather",
    "the blacksmith, gruff but kind",
    "a travelling musician, new in town",
    "the innkeeper, who hears every rumour",
    "a painter looking for the right light",
];

#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct Memory {
    pub text: String,
    /// The text's embedding, for similarity search.
    pub embedding: Vec<f32>,
}

/// What an operation in flight is for.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub enum Purpose {
    /// The next line of the agent's conversation with `with`.
    Line { with: EntityId },
    /// An answer to what player `to` said.
    Reply { to: EntityId },
    /// A one-sentence summary of the conversation with `with`, to remember.
    Summary { with: EntityId },
    /// The embedding of `text`, which becomes a memory.
    Remember { text: String },
}

#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct Thought {
    pub op: Operation,
    pub purpose: Purpose,
}

/// One agent's mind, part of the town's state (so checkpoints hold its memories and its
/// operation in flight).
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct Mind {
    pub bot: EntityId,
    pub identity: String,
    pub memories: Vec<Memory>,
    pub thinking: Option<Thought>,
}

impl Mind {
    pub fn new(bot: EntityId, index: usize) -> Self {
        Self { bot, identity: IDENTITIES[index % IDENTITIES.len()].into(), memories: Vec::new(), thinking: None }
    }

    pub fn is_free(&self) -> bool {
        self.thinking.is_none()
    }

    /// Starts thinking about `purpose` with `request`: the operation to run.
    pub fn think(&mut self, id: OpId, request: Request, purpose: Purpose) -> Operation {
        let op = Operation { id, request, timeout_ms: THINK_TIMEOUT_MS };
        self.thinking = Some(Thought { op: op.clone(), purpose });
        op
    }

    /// Keeps a memory, forgetting the oldest past [`MAX_MEMORIES`].
    pub fn remember(&mut self, memory: Memory) {
        if self.memories.len() >= MAX_MEMORIES {
            self.memories.remove(0);
        }
        self.memories.push(memory);
    }

    /// The memories a prompt about `other` carries: the closest to what the agent last
    /// remembered of `other` (by embedding), else the newest.
    pub fn recall(&self, other: &str) -> Vec<&str> {
        let about = self.memories.iter().rev().find(|m| m.text.contains(other));
        let mut ranked: Vec<(f32, usize)> = self
            .memories
            .iter()
            .enumerate()
            .map(|(i, m)| (about.map_or(i as f32, |a| cosine(&a.embedding, &m.embedding)), i))
            .collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
        ranked.into_iter().take(RECALLED).map(|(_, i)| self.memories[i].text.as_str()).collect()
    }

    fn system(&self, me: &str, task: &str, other: &str) -> ChatMessage {
        let mut content = format!("You are {me}, {}, in a small town. {task}", self.identity);
        let recalled = self.recall(other);
        if !recalled.is_empty() {
            content.push_str("\nWhat you remember:");
            for memory in recalled {
                content.push_str("\n- ");
                content.push_str(memory);
            }
        }
        ChatMessage { role: Role::System, content }
    }

    /// The next line of a conversation with `other`, given what was said (speaker, text).
    pub fn line(&self, me: &str, other: &str, transcript: &[(String, String)]) -> Request {
        let task = format!("You are talking with {other}. Say one short sentence, as {me}, and nothing else.");
        let mut messages = vec![self.system(me, &task, other)];
        if transcript.is_empty() {
            messages.push(user(format!("You meet {other}. Greet them and start a conversation.")));
        }
        for (speaker, text) in transcript {
            let role = if speaker == me { Role::Assistant } else { Role::User };
            messages.push(ChatMessage { role, content: text.clone() });
        }
        chat(messages)
    }

    /// An answer to `player`, who said `text`.
    pub fn reply(&self, me: &str, player: &str, text: &str) -> Request {
        let task = format!("{player} talks to you. Answer in one short sentence, as {me}, and nothing else.");
        chat(vec![self.system(me, &task, player), user(format!("{player}: {text}"))])
    }

    /// A one-sentence summary of a conversation with `other`, to remember.
    pub fn summary(&self, me: &str, other: &str, transcript: &[(String, String)]) -> Request {
        let task = format!("Summarize your conversation with {other} in one sentence you will remember.");
        let said: Vec<String> = transcript.iter().map(|(who, text)| format!("{who}: {text}")).collect();
        chat(vec![self.system(me, &task, other), user(said.join("\n"))])
    }
}

pub fn embed(text: &str) -> Request {
    Request::Embed(EmbedRequest { input: text.into() })
}

fn user(content: String) -> ChatMessage {
    ChatMessage { role: Role::User, content }
}

fn chat(messages: Vec<ChatMessage>) -> Request {
    Request::Chat(ChatRequest { messages, max_tokens: Some(MAX_TOKENS), temperature: Some(0.8) })
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let n = norm(a) * norm(b);
    if n > 0.0 { dot / n } else { 0.0 }
}

/// A model's answer as one line the town can say: its first line, trimmed, cut to `max`
/// bytes; `None` when nothing is left.
pub fn one_line(answer: &str, max: usize) -> Option<String> {
    let line = answer.lines().map(str::trim).find(|l| !l.is_empty())?;
    let mut end = line.len().min(max);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    Some(line[..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory(text: &str, embedding: Vec<f32>) -> Memory {
        Memory { text: text.into(), embedding }
    }

    #[test]
    fn recall_prefers_what_is_close_to_the_last_memory_of_the_other() {
        let mut mind = Mind::new(1, 0);
        mind.remember(memory("bob likes the harbour", vec![1.0, 0.0]));
        mind.remember(memory("the well is dry", vec![0.0, 1.0]));
        mind.remember(memory("boats in the harbour", vec![0.9, 0.1]));
        mind.remember(memory("rain tomorrow", vec![0.1, 0.9]));
        assert_eq!(mind.recall("bob")[..2], ["bob likes the harbour", "boats in the harbour"]);
        // Nothing about cyd: the newest.
        assert_eq!(mind.recall("cyd"), ["rain tomorrow", "boats in the harbour", "the well is dry"]);
    }

    #[test]
    fn memories_are_bounded() {
        let mut mind = Mind::new(1, 0);
        for i in 0..MAX_MEMORIES + 5 {
            mind.remember(memory(&i.to_string(), vec![]));
        }
        assert_eq!(mind.memories.len(), MAX_MEMORIES);
        assert_eq!(mind.memories[0].text, "5");
    }

    #[test]
    fn prompts_carry_identity_memories_and_the_transcript() {
        let mut mind = Mind::new(1, 0);
        mind.remember(memory("bob owes me bread", vec![1.0]));
        let transcript = vec![("ada".to_string(), "hello bob".to_string()), ("bob".to_string(), "hi ada".to_string())];
        let Request::Chat(chat) = mind.line("ada", "bob", &transcript) else { panic!() };
        assert!(
            chat.messages[0].content.contains("the baker") && chat.messages[0].content.contains("bob owes me bread")
        );
        let roles: Vec<Role> = chat.messages.iter().map(|m| m.role).collect();
        assert_eq!(roles, [Role::System, Role::Assistant, Role::User]);
    }

    #[test]
    fn answers_become_one_short_line() {
        assert_eq!(one_line("\n  Hello there!  \nMore.", 200).as_deref(), Some("Hello there!"));
        assert_eq!(one_line("héllo", 2).as_deref(), Some("h"));
        assert_eq!(one_line(" \n ", 10), None);
    }
}
