//! The reference world's wire types: what an AI-Town-style client sends and sees.
//!
//! The envelope ([`crate::protocol`]) is generic over a world's action, view and change
//! types; these are the reference world's, and the aliases [`ClientMsg`] and
//! [`ServerMsg`] fix the envelope to them.

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

/// Entity ids are unique within one world.
pub type EntityId = u32;

pub type ClientMsg = crate::protocol::ClientMsg<Action>;
pub type ServerMsg = crate::protocol::ServerMsg<Snapshot, Change>;

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize, ts_rs::TS)]
#[serde(tag = "type", rename_all = "camelCase", rename_all_fields = "camelCase", deny_unknown_fields)]
#[ts(export_to = "town.ts")]
pub enum Action {
    /// One step to a neighbouring cell (dx, dy in -1..=1, not both 0).
    Move { dx: i8, dy: i8 },
    /// Say something to the world.
    Say { text: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize, ts_rs::TS)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[ts(export_to = "town.ts")]
pub struct Snapshot {
    pub width: u16,
    pub height: u16,
    /// Wall cells, row-major bitmap: bit `y * width + x`.
    pub walls: Vec<u8>,
    pub entities: Vec<Entity>,
}

/// The eight one-cell steps a `Move` may take.
pub const STEPS: [(i8, i8); 8] = [(1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, -1), (1, -1), (-1, 1)];

impl Snapshot {
    /// The steps from cell (x, y) whose target is inside the map and not a wall.
    pub fn open_steps(&self, x: i32, y: i32) -> Vec<(i8, i8)> {
        STEPS
            .into_iter()
            .filter(|&(dx, dy)| match (u16::try_from(x + i32::from(dx)), u16::try_from(y + i32::from(dy))) {
                (Ok(tx), Ok(ty)) => !self.is_wall(tx, ty),
                _ => false,
            })
            .collect()
    }

    pub fn is_wall(&self, x: u16, y: u16) -> bool {
        if x >= self.width || y >= self.height {
            return true;
        }
        let bit = usize::from(y) * usize::from(self.width) + usize::from(x);
        self.walls.get(bit / 8).is_some_and(|byte| byte & (1 << (bit % 8)) != 0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize, ts_rs::TS)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[ts(export_to = "town.ts")]
pub struct Entity {
    pub id: EntityId,
    pub kind: EntityKind,
    /// A player's name is its player id.
    pub name: String,
    pub x: u16,
    pub y: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode, Serialize, Deserialize, ts_rs::TS)]
#[serde(rename_all = "camelCase")]
#[ts(export_to = "town.ts")]
pub enum EntityKind {
    Bot,
    Player,
}

/// In JSON, tagged by `type`; `joined` carries the entity's fields beside the tag.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize, ts_rs::TS)]
#[serde(tag = "type", rename_all = "camelCase", rename_all_fields = "camelCase")]
#[ts(export_to = "town.ts")]
pub enum Change {
    Joined(Entity),
    Moved {
        id: EntityId,
        x: u16,
        y: u16,
    },
    Left {
        id: EntityId,
    },
    Said {
        id: EntityId,
        text: String,
    },
    /// `id` started a conversation with `other`.
    Greeted {
        id: EntityId,
        other: EntityId,
    },
    /// `id` ended its conversation with `other`.
    Parted {
        id: EntityId,
        other: EntityId,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{decode_client, decode_server, encode_client, encode_server};

    #[test]
    fn round_trips() {
        let msgs = [
            ClientMsg::Join { token: "t".into() },
            ClientMsg::Input { seq: 7, action: Action::Move { dx: -1, dy: 1 } },
            ClientMsg::Input { seq: 8, action: Action::Say { text: "hi".into() } },
            ClientMsg::Ping { nonce: u64::MAX },
        ];
        for msg in msgs {
            assert_eq!(decode_client(&encode_client(&msg)), Ok(msg));
        }
        let snapshot = Snapshot {
            width: 3,
            height: 2,
            walls: vec![0b0000_0010],
            entities: vec![Entity { id: 1, kind: EntityKind::Bot, name: "ada".into(), x: 0, y: 1 }],
        };
        assert!(snapshot.is_wall(1, 0) && !snapshot.is_wall(0, 0) && snapshot.is_wall(3, 0));
        assert_eq!(snapshot.open_steps(0, 1), vec![(1, 0), (0, -1)]);
        assert_eq!(snapshot.open_steps(2, 0), vec![(0, 1), (-1, 1)]);
        let msgs = [
            ServerMsg::Welcome {
                world_id: "w".into(),
                you: 1,
                tick: 5,
                snapshot: snapshot.clone(),
                resume: "r".into(),
                messages: vec![crate::activity::WorldMessage {
                    epoch: 2,
                    tick: 4,
                    seq: 0,
                    at_ms: 1,
                    author_id: 1,
                    author: "ada".into(),
                    text: "hi".into(),
                }],
            },
            ServerMsg::Resync { tick: 9, snapshot, messages: vec![] },
            ServerMsg::Delta { tick: 6, server_us: 1, changes: vec![Change::Parted { id: 1, other: 2 }] },
        ];
        for msg in msgs {
            assert_eq!(decode_server(&encode_server(&msg)), Ok(msg));
        }
    }
}
