//! The raw baseline's frames: binary WebSocket messages, little-endian, no envelope.
//!
//! - client -> server, an input: its sequence number (`u32`, 4 bytes);
//! - server -> client, a reply: [`REPLY`] then the input's `u32` (5 bytes);
//! - server -> client, a tick: [`TICK`], the server's clock when the tick was sent (`u64`
//!   microseconds since the Unix epoch, like a Delta's `server_us`), then zeros up to the
//!   frame size asked for (at least 9 bytes).

use tokio_tungstenite::tungstenite::Bytes;

pub(crate) const TICK: u8 = 1;
pub(crate) const REPLY: u8 = 2;
/// The smallest tick frame: its kind and its time.
pub(crate) const MIN_TICK_BYTES: usize = 9;

/// What the server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ServerFrame {
    Tick { server_us: u64 },
    Reply { seq: u32 },
}

/// A tick frame of `size` bytes (at least [`MIN_TICK_BYTES`]) stamped `server_us`.
pub(crate) fn tick(server_us: u64, size: usize) -> Bytes {
    let mut frame = vec![0; size.max(MIN_TICK_BYTES)];
    frame[0] = TICK;
    frame[1..MIN_TICK_BYTES].copy_from_slice(&server_us.to_le_bytes());
    frame.into()
}

/// The size of a reply frame.
pub(crate) const REPLY_BYTES: usize = 5;

pub(crate) fn reply(seq: u32) -> Bytes {
    let mut frame = Vec::with_capacity(REPLY_BYTES);
    frame.push(REPLY);
    frame.extend_from_slice(&seq.to_le_bytes());
    frame.into()
}

pub(crate) fn input(seq: u32) -> Bytes {
    Bytes::copy_from_slice(&seq.to_le_bytes())
}

/// The sequence number of an input frame; `None` if it is not 4 bytes.
pub(crate) fn input_seq(frame: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(frame.try_into().ok()?))
}

/// A frame from the server; `None` if it is neither a tick nor a reply.
pub(crate) fn server_frame(frame: &[u8]) -> Option<ServerFrame> {
    match frame.split_first()? {
        (&TICK, rest) => Some(ServerFrame::Tick { server_us: u64::from_le_bytes(rest.get(..8)?.try_into().ok()?) }),
        (&REPLY, rest) => Some(ServerFrame::Reply { seq: u32::from_le_bytes(rest.try_into().ok()?) }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_at_the_size_asked() {
        let frame = tick(1_700_000_000_123_456, 38);
        assert_eq!(frame.len(), 38);
        assert_eq!(server_frame(&frame), Some(ServerFrame::Tick { server_us: 1_700_000_000_123_456 }));
        assert_eq!(tick(7, 0).len(), MIN_TICK_BYTES, "never smaller than its header");
        assert_eq!(server_frame(&reply(42)), Some(ServerFrame::Reply { seq: 42 }));
        assert_eq!(reply(42).len(), REPLY_BYTES);
        assert_eq!(input_seq(&input(u32::MAX)), Some(u32::MAX));
        assert_eq!(input_seq(b"abc"), None);
        assert_eq!(server_frame(&[TICK, 1, 2]), None);
        assert_eq!(server_frame(&[9, 0, 0, 0, 0]), None);
        assert_eq!(server_frame(&[]), None);
    }
}
