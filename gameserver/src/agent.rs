//! The town's agents: bots that think through a language model, as AI Town's do.
//!
//! An agent is a bot with a [`Mind`]: an identity, what it recalled about whom it talks
//! to, and at most one operation in flight (AI Town's rule: one thing at a time, each
//! bounded by a timeout, [`THINK_TIMEOUT_MS`]). What it says in a conversation, its
//! answer to a player who talks to it, and the summary it keeps of each conversation are
//! chat completions. A summary is then embedded and stored in the server's memory store
//! (a `Remember` operation); when an agent that has remembered anything starts a
//! conversation, it embeds a question about the other ("What do you think of bob?") and
//! recalls its [`RECALLED`] memories nearest to it (a `Recall` operation), which its
//! prompts in that conversation carry. Everything here is pure: the town starts the
//! operations ([`crate::town::Town`]), the runtime runs them, and their outcomes come
//! back as `complete` calls. A failed or timed-out call never stalls the town: the agent
//! falls back to its scripted line, keeps no memory, or talks without memories.

use bincode::{Decode, Encode};
use gaia_api::town::EntityId;
use gaia_ops::{
    ChatMessage, ChatRequest, EmbedRequest, OpId, Operation, RecallRequest, RememberRequest, Request, Role,
};

/// How long an agent waits for the model (AI Town's action timeout).
pub const THINK_TIMEOUT_MS: u64 = 120_000;
/// Memories a conversation's prompts carry (AI Town's three).
pub const RECALLED: u32 = 3;
/// Longest answer asked of the model, in tokens.
const MAX_TOKENS: u32 = 60;
/// A memory's importance is the words said in its conversation over this, at most
/// [`MAX_IMPORTANCE`]: AI Town's 0 to 9 scale, without its extra model call per memory.
const WORDS_PER_POINT: usize = 10;
pub const MAX_IMPORTANCE: f32 = 9.0;

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

/// What an operation in flight is for.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub enum Purpose {
    /// The next line of the agent's conversation with `with`.
    Line { with: EntityId },
    /// An answer to what player `to` said.
    Reply { to: EntityId },
    /// A one-sentence summary of the conversation with `with`, to remember, and how much
    /// the conversation mattered.
    Summary { with: EntityId, importance: f32 },
    /// The embedding of `text`, which is then stored as a memory.
    Embed { text: String, importance: f32 },
    /// A memory being stored.
    Store,
    /// The embedding of a question about `about`, to recall memories with.
    Wonder { about: EntityId },
    /// The memories nearest to that question.
    Recall { about: EntityId },
}

#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct Thought {
    pub op: Operation,
    pub purpose: Purpose,
}

/// What an agent recalled about someone: its prompts about them carry it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Recollection {
    pub about: EntityId,
    pub memories: Vec<String>,
}

/// One agent's mind, part of the town's state (so checkpoints hold its operation in
/// flight). Its memories are in the server's memory store, not here.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct Mind {
    pub bot: EntityId,
    pub identity: String,
    /// Memories it has stored (started storing): the last one's id.
    pub remembered: u64,
    /// What it recalled for its conversation now.
    pub recalled: Option<Recollection>,
    pub thinking: Option<Thought>,
}

impl Mind {
    pub fn new(bot: EntityId, index: usize) -> Self {
        Self {
            bot,
            identity: IDENTITIES[index % IDENTITIES.len()].into(),
            remembered: 0,
            recalled: None,
            thinking: None,
        }
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

    /// Stores a memory in `world_id`'s memory store, under the agent's next memory id.
    pub fn remember(&mut self, world_id: &str, text: String, importance: f32, embedding: Vec<f32>) -> Request {
        self.remembered += 1;
        Request::Remember(RememberRequest {
            world_id: world_id.into(),
            agent: self.bot,
            id: self.remembered,
            text,
            importance,
            embedding,
        })
    }

    /// The question an agent asks itself about `other` before talking with them.
    pub fn wonder(other: &str) -> Request {
        embed(&format!("What do you think of {other}?"))
    }

    /// The agent's memories nearest to `query`.
    pub fn recall(&self, world_id: &str, query: Vec<f32>) -> Request {
        Request::Recall(RecallRequest { world_id: world_id.into(), agent: self.bot, query, k: RECALLED })
    }

    /// What a prompt about `about` carries.
    fn memories_of(&self, about: EntityId) -> &[String] {
        match &self.recalled {
            Some(r) if r.about == about => &r.memories,
            _ => &[],
        }
    }

    fn system(&self, me: &str, task: &str, about: EntityId) -> ChatMessage {
        let mut content = format!("You are {me}, {}, in a small town. {task}", self.identity);
        let recalled = self.memories_of(about);
        if !recalled.is_empty() {
            content.push_str("\nWhat you remember:");
            for memory in recalled {
                content.push_str("\n- ");
                content.push_str(memory);
            }
        }
        ChatMessage { role: Role::System, content }
    }

    /// The next line of a conversation with `other` (entity `about`), given what was
    /// said (speaker, text).
    pub fn line(&self, me: &str, other: &str, about: EntityId, transcript: &[(String, String)]) -> Request {
        let task = format!("You are talking with {other}. Say one short sentence, as {me}, and nothing else.");
        let mut messages = vec![self.system(me, &task, about)];
        if transcript.is_empty() {
            messages.push(user(format!("You meet {other}. Greet them and start a conversation.")));
        }
        for (speaker, text) in transcript {
            let role = if speaker == me { Role::Assistant } else { Role::User };
            messages.push(ChatMessage { role, content: text.clone() });
        }
        chat(messages)
    }

    /// An answer to `player` (entity `about`), who said `text`.
    pub fn reply(&self, me: &str, player: &str, about: EntityId, text: &str) -> Request {
        let task = format!("{player} talks to you. Answer in one short sentence, as {me}, and nothing else.");
        chat(vec![self.system(me, &task, about), user(format!("{player}: {text}"))])
    }

    /// A one-sentence summary of a conversation with `other` (entity `about`), to remember.
    pub fn summary(&self, me: &str, other: &str, about: EntityId, transcript: &[(String, String)]) -> Request {
        let task = format!("Summarize your conversation with {other} in one sentence you will remember.");
        let said: Vec<String> = transcript.iter().map(|(who, text)| format!("{who}: {text}")).collect();
        chat(vec![self.system(me, &task, about), user(said.join("\n"))])
    }
}

/// How much a conversation matters: the more was said, the more (0 to [`MAX_IMPORTANCE`]).
pub fn importance(transcript: &[(String, String)]) -> f32 {
    let words: usize = transcript.iter().map(|(_, text)| text.split_whitespace().count()).sum();
    ((words / WORDS_PER_POINT) as f32).min(MAX_IMPORTANCE)
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

    #[test]
    fn prompts_carry_identity_what_was_recalled_about_the_other_and_the_transcript() {
        let mut mind = Mind::new(1, 0);
        mind.recalled = Some(Recollection { about: 2, memories: vec!["bob owes me bread".into()] });
        let transcript = vec![("ada".to_string(), "hello bob".to_string()), ("bob".to_string(), "hi ada".to_string())];
        let Request::Chat(chat) = mind.line("ada", "bob", 2, &transcript) else { panic!() };
        let system = &chat.messages[0].content;
        assert!(system.contains("the baker") && system.contains("What you remember:\n- bob owes me bread"), "{system}");
        let roles: Vec<Role> = chat.messages.iter().map(|m| m.role).collect();
        assert_eq!(roles, [Role::System, Role::Assistant, Role::User]);
        // Not what it recalled about someone else.
        let Request::Chat(chat) = mind.line("ada", "cyd", 3, &[]) else { panic!() };
        assert!(!chat.messages[0].content.contains("remember"), "{}", chat.messages[0].content);
    }

    #[test]
    fn memories_get_the_next_id_and_recalls_ask_for_three() {
        let mut mind = Mind::new(7, 0);
        for id in 1..=2 {
            let Request::Remember(r) = mind.remember("w", "x".into(), 2.0, vec![1.0]) else { panic!() };
            assert_eq!((r.world_id.as_str(), r.agent, r.id, r.importance), ("w", 7, id, 2.0));
        }
        let Request::Recall(r) = mind.recall("w", vec![0.5]) else { panic!() };
        assert_eq!((r.agent, r.k, r.query), (7, RECALLED, vec![0.5]));
        let Request::Embed(e) = Mind::wonder("bob-1") else { panic!() };
        assert_eq!(e.input, "What do you think of bob-1?");
    }

    #[test]
    fn importance_grows_with_what_was_said() {
        let line = |n: usize| ("a".to_string(), vec!["word"; n].join(" "));
        assert_eq!(importance(&[]), 0.0);
        assert_eq!(importance(&[line(12), line(9)]), 2.0);
        assert_eq!(importance(&[line(1000)]), MAX_IMPORTANCE);
    }

    #[test]
    fn answers_become_one_short_line() {
        assert_eq!(one_line("\n  Hello there!  \nMore.", 200).as_deref(), Some("Hello there!"));
        assert_eq!(one_line("héllo", 2).as_deref(), Some("h"));
        assert_eq!(one_line(" \n ", 10), None);
    }
}
