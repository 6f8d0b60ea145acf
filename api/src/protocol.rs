//! The client protocol: binary WebSocket frames, bincode 2, versioned envelope.
//!
//! Every frame is `version: u16` followed by one message, both in bincode's standard
//! (varint) encoding. The version is read first so a client built for another version
//! gets a clear [`ProtocolError::Version`] instead of a garbled decode. Decoding never
//! panics and never allocates more than the frame limit.

use bincode::{Decode, Encode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::activity::WorldMessage;

pub const PROTOCOL_VERSION: u16 = 1;

/// Largest frame a client may send.
pub const MAX_CLIENT_FRAME: usize = 4 * 1024;
/// Largest frame a server sends (a full snapshot of a big world fits).
pub const MAX_SERVER_FRAME: usize = 1024 * 1024;

/// Client to server. `A` is the world's action type (for the reference world,
/// [`crate::town::Action`]). In JSON, an object tagged by `type` (the variant's name in
/// camelCase) with camelCase fields, e.g. `{"type":"ping","nonce":1}`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize, ts_rs::TS)]
#[serde(tag = "type", rename_all = "camelCase", rename_all_fields = "camelCase", deny_unknown_fields)]
#[ts(export_to = "protocol.ts")]
pub enum ClientMsg<A> {
    /// First frame on a connection: the token from the allocator.
    Join {
        token: String,
    },
    /// Numbered per connection; each gets exactly one `InputResult`.
    Input {
        seq: u32,
        action: A,
    },
    Ping {
        nonce: u64,
    },
    /// First frame on a new connection after one dropped, instead of `Join`: the
    /// `resume` token of the last `Welcome`, and the seqs of inputs sent that have had no
    /// result yet. Within the server's resume grace the connection is the same member
    /// again (docs/protocol.md, "Resume").
    Resume {
        token: String,
        awaiting: Vec<u32>,
    },
}

/// Server to client. `V` is the world's view (a full snapshot a client can draw from)
/// and `C` one change to it; for the reference world, [`crate::town::Snapshot`] and
/// [`crate::town::Change`]. In JSON, tagged as [`ClientMsg`] is.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize, ts_rs::TS)]
#[serde(tag = "type", rename_all = "camelCase", rename_all_fields = "camelCase", deny_unknown_fields)]
#[ts(export_to = "protocol.ts")]
pub enum ServerMsg<V, C> {
    /// Answer to `Join`: the whole world as of `tick`, and which entity is yours.
    Welcome {
        world_id: String,
        you: u32,
        tick: u64,
        snapshot: V,
        /// A token to `Resume` with, should this connection drop.
        resume: String,
        /// The last lines said in the world, oldest first (at most the server's
        /// `GAIA_WORLD_RECENT_MESSAGES`, 20 by default): the conversation so far, as the
        /// activity log keeps it (`GET /v1/worlds/{worldId}/messages`).
        messages: Vec<WorldMessage>,
    },
    /// What changed in the world during `tick`: one frame per client per tick, the same
    /// bytes for every member. `server_us` is when the tick ran (Unix microseconds), so
    /// a client can tell how late it is.
    Delta {
        tick: u64,
        server_us: u64,
        changes: Vec<C>,
    },
    /// The client fell behind and missed deltas: here is the whole world as of `tick`;
    /// deltas resume with `tick + 1`. `messages` as in `Welcome`, so the lines said while
    /// the client was behind are not lost to it.
    Resync {
        tick: u64,
        snapshot: V,
        messages: Vec<WorldMessage>,
    },
    /// The outcome of input `seq`, applied during `tick` (0 when it never reached the
    /// world, e.g. when it was rate limited).
    InputResult {
        seq: u32,
        tick: u64,
        outcome: InputOutcome,
    },
    /// The world moved (its server is draining): reconnect to `address` and join with
    /// `token`. Every input applied before the move has had its result, and the last
    /// delta came before this; an input without a result was not applied, so send it
    /// again after joining. The server closes the connection (1001) right after.
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

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, Serialize, Deserialize, ts_rs::TS)]
#[serde(tag = "type", rename_all = "camelCase", rename_all_fields = "camelCase", deny_unknown_fields)]
#[ts(export_to = "protocol.ts")]
pub enum InputOutcome {
    Ok,
    /// Refused; `reason` is meant for the player's eyes.
    Rejected {
        reason: String,
    },
}

/// The reason of the `Rejected` result (tick 0) a `Resume` gets for an awaited seq the
/// server never received: the input was not applied, so the client may send it again.
pub const NEVER_RECEIVED: &str = "never reached the server: send it again";

/// The reason of the `Rejected` result (tick 0) every input of a spectator gets: a
/// connection that joined with a spectate token watches, it does not act.
pub const SPECTATORS_CANNOT_ACT: &str = "spectators cannot act";

/// Now, in microseconds since the Unix epoch: the clock of `Delta::server_us`.
pub fn unix_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
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
    /// The world cannot run here now (its checkpoint could not be read, or it moved to
    /// another server): allocate again and join where the allocator says.
    pub const WORLD_UNAVAILABLE: u16 = 4012;
    /// The same player joined the same world on a newer connection, which took over.
    pub const REPLACED: u16 = 4013;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("protocol version {got} is not supported (server speaks {PROTOCOL_VERSION})")]
    Version { got: u16 },
    #[error("malformed frame: {0}")]
    Malformed(String),
}

impl ProtocolError {
    /// The close code to end a connection with for this error.
    pub fn close_code(&self) -> u16 {
        match self {
            Self::TooLarge { .. } => close::FRAME_TOO_LARGE,
            Self::Version { .. } => close::VERSION,
            Self::Malformed(_) => close::MALFORMED,
        }
    }
}

/// bincode's limit counts what a decode claims, not the bytes it reads: a varint `u64`
/// of one byte claims 8, a `u128` 16. A frame within its size limit claims at most 16
/// times its length, so this bounds what a decode may allocate without refusing any
/// frame that fits; a length prefix past it claims more than the frame holds.
const CLAIMS_PER_BYTE: usize = 16;

const fn config<const LIMIT: usize>()
-> bincode::config::Configuration<bincode::config::LittleEndian, bincode::config::Varint, bincode::config::Limit<LIMIT>>
{
    bincode::config::standard().with_limit::<LIMIT>()
}

fn encode<T: Encode>(msg: &T) -> Vec<u8> {
    // Encoding into a Vec cannot fail: no limit is set and our types have no fallible Encode.
    bincode::encode_to_vec((PROTOCOL_VERSION, msg), bincode::config::standard()).unwrap_or_default()
}

/// bincode's errors, in words a client author can act on.
fn malformed(e: bincode::error::DecodeError) -> ProtocolError {
    use bincode::error::DecodeError as E;
    ProtocolError::Malformed(match e {
        E::UnexpectedVariant { type_name, found, .. } => format!("unknown message kind {found} for {type_name}"),
        E::UnexpectedEnd { additional } => format!("frame ends {additional} bytes early"),
        E::LimitExceeded => "a length prefix claims more than the frame holds".into(),
        other => other.to_string(),
    })
}

fn decode<T: Decode<()>, const LIMIT: usize, const CLAIMS: usize>(frame: &[u8]) -> Result<T, ProtocolError> {
    if frame.len() > LIMIT {
        return Err(ProtocolError::TooLarge { size: frame.len(), limit: LIMIT });
    }
    let (version, used): (u16, usize) = bincode::decode_from_slice(frame, config::<CLAIMS>()).map_err(malformed)?;
    if version != PROTOCOL_VERSION {
        return Err(ProtocolError::Version { got: version });
    }
    let body = &frame[used..];
    let (msg, read): (T, usize) = bincode::decode_from_slice(body, config::<CLAIMS>()).map_err(malformed)?;
    if read != body.len() {
        return Err(ProtocolError::Malformed(format!("{} trailing bytes", body.len() - read)));
    }
    Ok(msg)
}

/// How one connection's frames are written, chosen by the client with
/// `Sec-WebSocket-Protocol`: bincode in binary frames (the default when it names none), or
/// JSON in text frames. The version is in the name, so JSON frames carry none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Bincode,
    Json,
}

impl Encoding {
    pub const ALL: [Encoding; 2] = [Encoding::Bincode, Encoding::Json];

    /// Its `Sec-WebSocket-Protocol` name.
    pub const fn subprotocol(self) -> &'static str {
        match self {
            Self::Bincode => "gaia.v1.bincode",
            Self::Json => "gaia.v1.json",
        }
    }

    pub fn from_subprotocol(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.subprotocol() == name)
    }

    /// Index into per-encoding caches.
    pub const fn index(self) -> usize {
        self as usize
    }

    pub fn encode_server<V: Encode + Serialize, C: Encode + Serialize>(self, msg: &ServerMsg<V, C>) -> Vec<u8> {
        match self {
            Self::Bincode => encode(msg),
            // Serializing our types to JSON cannot fail: every map key is a string.
            Self::Json => serde_json::to_vec(msg).unwrap_or_default(),
        }
    }

    /// Encodes `msg` at the end of `buf` and splits it off: frames encoded one after
    /// another into one buffer share its allocation, so a world answering many members
    /// allocates once per buffer, not once per frame.
    pub fn encode_server_into<V: Encode + Serialize, C: Encode + Serialize>(
        self,
        msg: &ServerMsg<V, C>,
        buf: &mut bytes::BytesMut,
    ) -> bytes::Bytes {
        use bytes::BufMut;
        let mut writer = buf.writer();
        // Writing into memory cannot fail, as for `encode_server`.
        let _ = match self {
            Self::Bincode => {
                bincode::encode_into_std_write((PROTOCOL_VERSION, msg), &mut writer, bincode::config::standard())
                    .map(drop)
                    .map_err(|_| ())
            }
            Self::Json => serde_json::to_writer(&mut writer, msg).map_err(|_| ()),
        };
        buf.split().freeze()
    }

    pub fn encode_client<A: Encode + Serialize>(self, msg: &ClientMsg<A>) -> Vec<u8> {
        match self {
            Self::Bincode => encode(msg),
            Self::Json => serde_json::to_vec(msg).unwrap_or_default(),
        }
    }

    /// Decodes a client frame, at most [`MAX_CLIENT_FRAME`] bytes in either encoding.
    pub fn decode_client<A: Decode<()> + DeserializeOwned>(self, frame: &[u8]) -> Result<ClientMsg<A>, ProtocolError> {
        match self {
            Self::Bincode => decode_client(frame),
            Self::Json => decode_json(frame, MAX_CLIENT_FRAME),
        }
    }

    pub fn decode_server<V: Decode<()> + DeserializeOwned, C: Decode<()> + DeserializeOwned>(
        self,
        frame: &[u8],
    ) -> Result<ServerMsg<V, C>, ProtocolError> {
        match self {
            Self::Bincode => decode_server(frame),
            Self::Json => decode_json(frame, MAX_SERVER_FRAME),
        }
    }
}

fn decode_json<T: DeserializeOwned>(frame: &[u8], limit: usize) -> Result<T, ProtocolError> {
    if frame.len() > limit {
        return Err(ProtocolError::TooLarge { size: frame.len(), limit });
    }
    serde_json::from_slice(frame).map_err(|e| ProtocolError::Malformed(e.to_string()))
}

pub fn encode_client<A: Encode>(msg: &ClientMsg<A>) -> Vec<u8> {
    encode(msg)
}

pub fn encode_server<V: Encode, C: Encode>(msg: &ServerMsg<V, C>) -> Vec<u8> {
    encode(msg)
}

pub fn decode_client<A: Decode<()>>(frame: &[u8]) -> Result<ClientMsg<A>, ProtocolError> {
    decode::<ClientMsg<A>, MAX_CLIENT_FRAME, { MAX_CLIENT_FRAME * CLAIMS_PER_BYTE }>(frame)
}

pub fn decode_server<V: Decode<()>, C: Decode<()>>(frame: &[u8]) -> Result<ServerMsg<V, C>, ProtocolError> {
    decode::<ServerMsg<V, C>, MAX_SERVER_FRAME, { MAX_SERVER_FRAME * CLAIMS_PER_BYTE }>(frame)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::town::{Action, Change, ClientMsg, ServerMsg, Snapshot};

    #[test]
    fn frames_encoded_into_one_buffer_are_the_frames_encoded_alone() {
        let mut buf = bytes::BytesMut::with_capacity(16);
        for encoding in Encoding::ALL {
            let frames: Vec<_> = (0..40u32)
                .map(|seq| {
                    let outcome =
                        if seq % 3 == 0 { InputOutcome::Rejected { reason: "no".into() } } else { InputOutcome::Ok };
                    let msg: ServerMsg = ServerMsg::InputResult { seq, tick: u64::from(seq) * 7, outcome };
                    (encoding.encode_server_into(&msg, &mut buf), encoding.encode_server(&msg))
                })
                .collect();
            for (into, alone) in frames {
                assert_eq!(&into[..], &alone[..]);
            }
        }
    }

    #[test]
    fn wrong_version_is_named() {
        let mut frame = encode_client(&ClientMsg::Ping { nonce: 1 });
        frame[0] = 9; // varint of a small u16 is one byte
        assert_eq!(decode_client::<Action>(&frame), Err(ProtocolError::Version { got: 9 }));
        assert_eq!(ProtocolError::Version { got: 9 }.close_code(), close::VERSION);
    }

    #[test]
    fn bad_frames_are_errors() {
        let client = |frame: &[u8]| decode_client::<Action>(frame);
        assert!(matches!(client(&[]), Err(ProtocolError::Malformed(_))));
        // An unknown message kind is named as such.
        let unknown = client(&[1, 200]);
        assert!(
            matches!(&unknown, Err(ProtocolError::Malformed(m)) if m == "unknown message kind 200 for ClientMsg"),
            "{unknown:?}"
        );
        let mut trailing = encode_client(&ClientMsg::Ping { nonce: 1 });
        trailing.push(0);
        assert_eq!(client(&trailing), Err(ProtocolError::Malformed("1 trailing bytes".into())));
        let big = vec![0u8; MAX_CLIENT_FRAME + 1];
        assert_eq!(client(&big), Err(ProtocolError::TooLarge { size: MAX_CLIENT_FRAME + 1, limit: MAX_CLIENT_FRAME }));
        // A length prefix claiming a huge string must not allocate it.
        let mut huge = encode_client(&ClientMsg::Join { token: String::new() });
        huge.truncate(2);
        huge.extend_from_slice(&[0xfd, 0xff, 0xff, 0xff, 0x7f]);
        assert!(client(&huge).is_err());
    }

    /// One limit, exact to the byte: every frame up to it decodes, one byte more does not.
    #[test]
    fn the_client_frame_limit_is_exact() {
        let join = |len: usize| {
            let empty = encode_client(&ClientMsg::Join { token: String::new() }).len();
            // The string's length prefix grows from 1 to 3 bytes on the way.
            let mut token_len = len - empty;
            while encode_client(&ClientMsg::Join { token: "t".repeat(token_len) }).len() > len {
                token_len -= 1;
            }
            encode_client(&ClientMsg::Join { token: "t".repeat(token_len) })
        };
        for len in 3..=MAX_CLIENT_FRAME {
            let frame = join(len);
            if frame.len() == len {
                assert!(decode_client::<Action>(&frame).is_ok(), "a frame of {len} bytes");
            }
        }
        let max = join(MAX_CLIENT_FRAME);
        assert_eq!(max.len(), MAX_CLIENT_FRAME);
        assert!(decode_client::<Action>(&max).is_ok());
        let mut over = max;
        over.push(b't');
        assert_eq!(
            decode_client::<Action>(&over),
            Err(ProtocolError::TooLarge { size: MAX_CLIENT_FRAME + 1, limit: MAX_CLIENT_FRAME })
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_client::<Action>(&bytes);
            let _ = decode_server::<Snapshot, Change>(&bytes);
        }

        /// Valid frames with arbitrary bytes spliced in: the decoder's deeper paths.
        #[test]
        fn mutated_frames_never_panic(seq in any::<u32>(), text in ".{0,40}", at in any::<usize>(), byte in any::<u8>()) {
            let mut frame = encode_client(&ClientMsg::Input { seq, action: Action::Say { text } });
            let i = at % frame.len();
            frame[i] = byte;
            let _ = decode_client::<Action>(&frame);
            let delta: ServerMsg = ServerMsg::Delta { tick: 1, server_us: 2, changes: vec![Change::Left { id: seq }] };
            let mut frame = encode_server(&delta);
            let i = at % frame.len();
            frame[i] = byte;
            let _ = decode_server::<Snapshot, Change>(&frame);
        }
    }
}
