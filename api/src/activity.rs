//! The activity log as the API serves it (`GET /v1/worlds/{worldId}/messages`) and as a
//! game server's `Welcome` and `Resync` carry its last lines.

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

/// One line said in a world.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize, utoipa::ToSchema, ts_rs::TS)]
#[ts(export_to = "activity.ts")]
#[serde(rename_all = "camelCase")]
pub struct WorldMessage {
    /// The world's epoch when it was said: a world restored from a checkpoint goes on at a
    /// newer one, so lines said after that checkpoint keep their place.
    pub epoch: u64,
    pub tick: u64,
    /// Its place among the lines of its tick.
    pub seq: u32,
    /// When it was said, Unix milliseconds.
    pub at_ms: u64,
    /// The entity that said it, and its name then.
    pub author_id: u32,
    pub author: String,
    pub text: String,
}

/// A page of a world's messages, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, ts_rs::TS)]
#[ts(export_to = "activity.ts")]
#[serde(rename_all = "camelCase")]
pub struct MessagePage {
    pub messages: Vec<WorldMessage>,
    /// Pass as `before` for the next (older) page; unset on the last page.
    pub next: Option<String>,
}
