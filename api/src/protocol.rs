//! The client protocol: binary WebSocket frames, bincode 2, versioned envelope.
//!
//! Every frame is `version: u16` followed by one message, both in bincode's standard
//! (varint) encoding. The version is read first so a client built for another version
//! gets a clear [`ProtocolError::Version`] instead of a garbled decode. Decoding never
//! panics and never allocates more than the frame limit.

use bincode::{Decode, Encode};

pub const PROTOCOL_VERSION: u16 = 1;

/// Largest frame a client may send.
pub const MAX_CLIENT_FRAME: usize = 4 * 1024;
/// Largest frame a server sends (a full snapshot of a big world fits).
pub const MAX_SERVER_FRAME: usize = 1024 * 1024;

/// Entity ids are unique within one world.
pub type EntityId = u32;

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum ClientMsg {
    /// First frame on a connection: the token from the allocator.
    Join {
        token: String,
    },
    /// Numbered per connection; each gets exactly one `InputResult`.
    Input {
        seq: u32,
        action: Action,
    },
    Ping {
        nonce: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Action {
    /// One step to a neighbouring cell (dx, dy in -1..=1, not both 0).
    Move { dx: i8, dy: i8 },
    /// Say something to the world.
    Say { text: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum ServerMsg {
    /// Answer to `Join`: the whole world as of `tick`, and which entity is yours.
    Welcome {
        world_id: String,
        you: EntityId,
        tick: u64,
        snapshot: Snapshot,
    },
    /// What changed in the world during `tick`. One per client per tick.
    Delta {
        tick: u64,
        changes: Vec<Change>,
    },
    /// The outcome of input `seq`, applied during `tick`.
    InputResult {
        seq: u32,
        tick: u64,
        outcome: InputOutcome,
    },
    /// The world moved: reconnect to `address` and join with `token`.
    Migrate {
        address: String,
        token: String,
    },
    /// Something went wrong; `code` is one of [`close`]'s codes.
    Error {
        code: u16,
        message: String,
    },
    Pong {
        nonce: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum InputOutcome {
    Ok,
    Rejected { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
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

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Entity {
    pub id: EntityId,
    pub kind: EntityKind,
    pub name: String,
    pub x: u16,
    pub y: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum EntityKind {
    Bot,
    Player,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Change {
    Joined(Entity),
    Moved { id: EntityId, x: u16, y: u16 },
    Left { id: EntityId },
    Said { id: EntityId, text: String },
    Greeted { id: EntityId, other: EntityId },
}

/// WebSocket close codes (and `ServerMsg::Error` codes) the game server uses.
pub mod close {
    /// Server is shutting down or draining (RFC 6455 "going away").
    pub const GOING_AWAY: u16 = 1001;
    pub const BAD_TOKEN: u16 = 4001;
    pub const MALFORMED: u16 = 4002;
    pub const VERSION: u16 = 4003;
    pub const WORLD_FULL: u16 = 4004;
    pub const ALREADY_JOINED: u16 = 4005;
    pub const NOT_JOINED: u16 = 4006;
    pub const SERVER_FULL: u16 = 4007;
    pub const TOO_SLOW: u16 = 4008;
    pub const RATE_LIMITED: u16 = 4009;
    pub const IDLE: u16 = 4010;
    pub const FRAME_TOO_LARGE: u16 = 4011;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("protocol version {got} is not supported (server speaks {PROTOCOL_VERSION})")]
    Version { got: u16 },
    #[error("malformed frame: {0}")]
    Malformed(String),
}

impl ProtocolError {
    /// The close code to end a connection with for this error.
    pub fn close_code(&self) -> u16 {
        match self {
            Self::TooLarge(_) => close::FRAME_TOO_LARGE,
            Self::Version { .. } => close::VERSION,
            Self::Malformed(_) => close::MALFORMED,
        }
    }
}

const fn config<const LIMIT: usize>()
-> bincode::config::Configuration<bincode::config::LittleEndian, bincode::config::Varint, bincode::config::Limit<LIMIT>>
{
    bincode::config::standard().with_limit::<LIMIT>()
}

fn encode<T: Encode>(msg: &T) -> Vec<u8> {
    // Encoding into a Vec cannot fail: no limit is set and our types have no fallible Encode.
    bincode::encode_to_vec((PROTOCOL_VERSION, msg), bincode::config::standard()).unwrap_or_default()
}

fn decode<T: Decode<()>, const LIMIT: usize>(frame: &[u8]) -> Result<T, ProtocolError> {
    if frame.len() > LIMIT {
        return Err(ProtocolError::TooLarge(frame.len()));
    }
    let (version, used): (u16, usize) =
        bincode::decode_from_slice(frame, config::<LIMIT>()).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    if version != PROTOCOL_VERSION {
        return Err(ProtocolError::Version { got: version });
    }
    let body = &frame[used..];
    let (msg, read): (T, usize) =
        bincode::decode_from_slice(body, config::<LIMIT>()).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    if read != body.len() {
        return Err(ProtocolError::Malformed(format!("{} trailing bytes", body.len() - read)));
    }
    Ok(msg)
}

pub fn encode_client(msg: &ClientMsg) -> Vec<u8> {
    encode(msg)
}

pub fn encode_server(msg: &ServerMsg) -> Vec<u8> {
    encode(msg)
}

pub fn decode_client(frame: &[u8]) -> Result<ClientMsg, ProtocolError> {
    decode::<ClientMsg, MAX_CLIENT_FRAME>(frame)
}

pub fn decode_server(frame: &[u8]) -> Result<ServerMsg, ProtocolError> {
    decode::<ServerMsg, MAX_SERVER_FRAME>(frame)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

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
        let msg = ServerMsg::Welcome { world_id: "w".into(), you: 1, tick: 5, snapshot };
        assert_eq!(decode_server(&encode_server(&msg)), Ok(msg));
    }

    #[test]
    fn wrong_version_is_named() {
        let mut frame = encode_client(&ClientMsg::Ping { nonce: 1 });
        frame[0] = 9; // varint of a small u16 is one byte
        assert_eq!(decode_client(&frame), Err(ProtocolError::Version { got: 9 }));
        assert_eq!(ProtocolError::Version { got: 9 }.close_code(), close::VERSION);
    }

    #[test]
    fn bad_frames_are_errors() {
        assert!(matches!(decode_client(&[]), Err(ProtocolError::Malformed(_))));
        assert!(matches!(decode_client(&[1, 200]), Err(ProtocolError::Malformed(_))));
        let mut trailing = encode_client(&ClientMsg::Ping { nonce: 1 });
        trailing.push(0);
        assert_eq!(decode_client(&trailing), Err(ProtocolError::Malformed("1 trailing bytes".into())));
        let big = vec![0u8; MAX_CLIENT_FRAME + 1];
        assert_eq!(decode_client(&big), Err(ProtocolError::TooLarge(MAX_CLIENT_FRAME + 1)));
        // A length prefix claiming a huge string must not allocate it.
        let mut huge = encode_client(&ClientMsg::Join { token: String::new() });
        huge.truncate(2);
        huge.extend_from_slice(&[0xfd, 0xff, 0xff, 0xff, 0x7f]);
        assert!(decode_client(&huge).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_client(&bytes);
            let _ = decode_server(&bytes);
        }
    }
}
