//! The checkpoint format: `b"GCK1"`, the [`Header`] in bincode 2 (without its checksum),
//! the world's state, and the checksum: CRC-32 (IEEE) of everything before it, little
//! endian.
//!
//! The header names the world and carries the fencing epoch, the tick, the world's
//! schema version and the state's length. The checksum covers the header too, so a
//! flipped bit in a tick is caught like one in the state. [`Checkpoint::decode`] checks
//! all of it: a truncated or corrupted checkpoint is an error, never a world.

use bincode::{Decode, Encode};
use bytes::Bytes;

/// First bytes of every checkpoint; the digit is the format's version.
pub const MAGIC: [u8; 4] = *b"GCK1";

/// Largest header accepted when decoding (a world id is at most 128 bytes).
const MAX_HEADER: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub world_id: String,
    /// The owner's epoch: the registry bumps it each time the world is assigned.
    pub epoch: u64,
    /// The world's tick when the state was taken.
    pub tick: u64,
    /// The world type's own version of its state layout.
    pub schema_version: u32,
    /// CRC-32 (IEEE) of the magic, the header's other fields and the state.
    pub checksum: u32,
}

/// The header as encoded: everything but the checksum, plus the state's length.
#[derive(Encode, Decode)]
struct Encoded {
    world_id: String,
    epoch: u64,
    tick: u64,
    schema_version: u32,
    len: u64,
}

const CHECKSUM: usize = 4;

/// Why bytes are not a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("not a checkpoint (bad magic bytes)")]
    BadMagic,
    #[error("unreadable checkpoint header: {0}")]
    Header(String),
    #[error("checkpoint of world {found:?} stored under {expected:?}")]
    WrongWorld { expected: String, found: String },
    #[error("truncated checkpoint: header says {expected} state bytes, found {found}")]
    Truncated { expected: u64, found: u64 },
    #[error("checkpoint checksum mismatch (header {expected:#010x}, state {found:#010x})")]
    Checksum { expected: u32, found: u32 },
}

/// One world's state at one tick, encoded once when made; stores keep [`Self::bytes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    header: Header,
    bytes: Bytes,
    /// Where the state starts in `bytes`.
    state_at: usize,
}

impl Checkpoint {
    pub fn new(world_id: &str, epoch: u64, tick: u64, schema_version: u32, state: &[u8]) -> Self {
        let encoded = Encoded { world_id: world_id.to_string(), epoch, tick, schema_version, len: state.len() as u64 };
        let mut bytes = Vec::with_capacity(MAGIC.len() + 32 + world_id.len() + state.len() + CHECKSUM);
        bytes.extend_from_slice(&MAGIC);
        // Encoding strings and integers into a Vec cannot fail.
        let _ = bincode::encode_into_std_write(&encoded, &mut bytes, bincode::config::standard());
        let state_at = bytes.len();
        bytes.extend_from_slice(state);
        let checksum = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&checksum.to_le_bytes());
        let header = Header { world_id: encoded.world_id, epoch, tick, schema_version, checksum };
        Self { header, bytes: bytes.into(), state_at }
    }

    /// Checks `bytes` (read from a store under `world_id`): magic, header, world, length
    /// and checksum.
    pub fn decode(world_id: &str, bytes: Bytes) -> Result<Self, FormatError> {
        let rest = bytes.strip_prefix(&MAGIC).ok_or(FormatError::BadMagic)?;
        let config = bincode::config::standard().with_limit::<MAX_HEADER>();
        let (encoded, read): (Encoded, usize) =
            bincode::decode_from_slice(rest, config).map_err(|e| FormatError::Header(e.to_string()))?;
        if encoded.world_id != world_id {
            return Err(FormatError::WrongWorld { expected: world_id.to_string(), found: encoded.world_id });
        }
        let state_at = MAGIC.len() + read;
        let found = (bytes.len() - state_at).saturating_sub(CHECKSUM) as u64;
        if bytes.len() < state_at + CHECKSUM || found != encoded.len {
            return Err(FormatError::Truncated { expected: encoded.len, found });
        }
        let (covered, trailer) = bytes.split_at(bytes.len() - CHECKSUM);
        let expected = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
        let found = crc32fast::hash(covered);
        if found != expected {
            return Err(FormatError::Checksum { expected, found });
        }
        let Encoded { world_id, epoch, tick, schema_version, .. } = encoded;
        let header = Header { world_id, epoch, tick, schema_version, checksum: expected };
        Ok(Self { header, bytes, state_at })
    }

    /// Bytes that are not a valid checkpoint, stored as if they were one: for tests and
    /// tools that need a store to hold something corrupt.
    pub fn raw(world_id: &str, epoch: u64, tick: u64, bytes: Bytes) -> Self {
        let header = Header { world_id: world_id.to_string(), epoch, tick, schema_version: 0, checksum: 0 };
        let state_at = bytes.len();
        Self { header, bytes, state_at }
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn world_id(&self) -> &str {
        &self.header.world_id
    }

    pub fn epoch(&self) -> u64 {
        self.header.epoch
    }

    pub fn tick(&self) -> u64 {
        self.header.tick
    }

    /// The world's saved state.
    pub fn state(&self) -> &[u8] {
        let end = self.bytes.len().saturating_sub(CHECKSUM).max(self.state_at);
        &self.bytes[self.state_at..end]
    }

    /// The whole encoded checkpoint, as stores keep it.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Newer means a later owner, or the same owner at a later tick.
    pub fn is_newer_than(&self, other: &Checkpoint) -> bool {
        (self.epoch(), self.tick()) > (other.epoch(), other.tick())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn sample() -> Checkpoint {
        Checkpoint::new("w-1", 7, 1200, 3, b"the state of the world")
    }

    #[test]
    fn round_trip() {
        let c = sample();
        let back = Checkpoint::decode("w-1", c.bytes().clone()).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.state(), b"the state of the world");
        assert_eq!((back.epoch(), back.tick(), back.header().schema_version), (7, 1200, 3));
    }

    #[test]
    fn every_kind_of_damage_is_named() {
        let good = sample().bytes().to_vec();
        let decode = |bytes: Vec<u8>| Checkpoint::decode("w-1", bytes.into()).unwrap_err();

        assert_eq!(decode(b"GCK2rest".to_vec()), FormatError::BadMagic);
        assert_eq!(decode(Vec::new()), FormatError::BadMagic);
        assert!(matches!(decode(MAGIC.to_vec()), FormatError::Header(_)));
        assert!(matches!(Checkpoint::decode("w-2", good.clone().into()).unwrap_err(), FormatError::WrongWorld { .. }));
        assert!(matches!(decode(good[..good.len() - 1].to_vec()), FormatError::Truncated { .. }));
        let mut longer = good.clone();
        longer.push(0);
        assert!(matches!(decode(longer), FormatError::Truncated { .. }));
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 0x40;
        assert!(matches!(decode(flipped), FormatError::Checksum { .. }));
    }

    #[test]
    fn newer_is_epoch_then_tick() {
        let at = |epoch, tick| Checkpoint::new("w", epoch, tick, 1, b"");
        assert!(at(2, 1).is_newer_than(&at(1, 900)));
        assert!(at(2, 10).is_newer_than(&at(2, 9)));
        assert!(!at(2, 10).is_newer_than(&at(2, 10)));
    }

    proptest! {
        /// No damage to a checkpoint decodes as a different one, and none panics.
        #[test]
        fn damaged_checkpoints_never_load(cut in 0usize..64, at in any::<usize>(), byte in any::<u8>()) {
            let good = sample().bytes().to_vec();
            let mut bad = good.clone();
            let i = at % bad.len();
            bad[i] ^= byte | 1;
            prop_assert!(Checkpoint::decode("w-1", bad.into()).is_err());
            let cut = cut.min(good.len() - 1);
            prop_assert!(Checkpoint::decode("w-1", good[..cut].to_vec().into()).is_err());
        }
    }
}
