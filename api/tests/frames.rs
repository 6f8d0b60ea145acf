#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns
//! Golden frames: one message of every kind of the reference world's protocol, in both
//! encodings, in `protocol/frames.json`. Every client's tests read the same file (the
//! TypeScript client's too), so a client that passes them writes and reads the bytes the
//! server does. docs/protocol.md shows some of them; `protocol_doc.rs` checks those.
//!
//! The file is what this test makes of [`messages`]; after changing a message type, run
//! `GAIA_BLESS=1 cargo test -p gaia-api --test frames` and review the diff.

use gaia_api::activity::WorldMessage;
use gaia_api::protocol::{Encoding, InputOutcome, close};
use gaia_api::town::{Action, Change, ClientMsg, Entity, EntityKind, ServerMsg, Snapshot};
use serde_json::{Value, json};

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../protocol/frames.json");

enum Msg {
    Client(ClientMsg),
    Server(ServerMsg),
}

fn entity(id: u32, kind: EntityKind, name: &str, x: u16, y: u16) -> Entity {
    Entity { id, kind, name: name.into(), x, y }
}

/// Every message and variant, with values that exercise each integer width (a varint of
/// one byte and of three, a negative i8) and an empty and a non-empty list.
fn messages() -> Vec<(&'static str, Msg)> {
    use Msg::{Client, Server};
    let snapshot = Snapshot {
        width: 4,
        height: 3,
        walls: vec![0b1000_0110, 0b0000_0000],
        entities: vec![entity(1, EntityKind::Bot, "ada", 0, 0), entity(300, EntityKind::Player, "p-1", 3, 2)],
    };
    vec![
        ("join", Client(ClientMsg::Join { token: "eyJ3b3JsZCI6IncxIn0.c2ln".into() })),
        ("input move", Client(ClientMsg::Input { seq: 1, action: Action::Move { dx: -1, dy: 1 } })),
        ("input say", Client(ClientMsg::Input { seq: 300, action: Action::Say { text: "héllo".into() } })),
        ("ping", Client(ClientMsg::Ping { nonce: 1_000_000 })),
        (
            "welcome",
            Server(ServerMsg::Welcome {
                world_id: "w1".into(),
                you: 300,
                tick: 120,
                snapshot: snapshot.clone(),
                resume: "eyJtZW1iZXIiOjd9.c2ln".into(),
                messages: vec![WorldMessage {
                    epoch: 2,
                    tick: 118,
                    seq: 0,
                    at_ms: 1_764_000_000_000,
                    author_id: 1,
                    author: "ada".into(),
                    text: "héllo, p-1".into(),
                }],
            }),
        ),
        ("resume", Client(ClientMsg::Resume { token: "eyJtZW1iZXIiOjd9.c2ln".into(), awaiting: vec![5, 300] })),
        (
            "delta",
            Server(ServerMsg::Delta {
                tick: 122,
                server_us: 1_764_000_000_000_000,
                changes: vec![
                    Change::Joined(entity(301, EntityKind::Player, "p-2", 1, 2)),
                    Change::Moved { id: 1, x: 1, y: 0 },
                    Change::Left { id: 7 },
                    Change::Said { id: 300, text: "hi".into() },
                    Change::Greeted { id: 1, other: 2 },
                    Change::Parted { id: 1, other: 2 },
                ],
            }),
        ),
        ("delta empty", Server(ServerMsg::Delta { tick: 124, server_us: 5, changes: vec![] })),
        ("resync", Server(ServerMsg::Resync { tick: 130, snapshot, messages: vec![] })),
        ("input result ok", Server(ServerMsg::InputResult { seq: 1, tick: 121, outcome: InputOutcome::Ok })),
        (
            "input result rejected",
            Server(ServerMsg::InputResult {
                seq: 2,
                tick: 0,
                outcome: InputOutcome::Rejected { reason: "slow down".into() },
            }),
        ),
        (
            "migrate",
            Server(ServerMsg::Migrate { address: "ws://10.0.0.2:7000/ws".into(), token: "eyJ3IjoxfQ.c2ln".into() }),
        ),
        ("error", Server(ServerMsg::Error { code: close::WORLD_FULL, message: "world is full (30 players)".into() })),
        ("pong", Server(ServerMsg::Pong { nonce: 1_000_000 })),
    ]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
}

fn unhex(text: &str) -> Vec<u8> {
    text.split_whitespace().map(|b| u8::from_str_radix(b, 16).unwrap()).collect()
}

/// The file's entry for one message: both encodings, as the server writes them.
fn entry(name: &str, msg: &Msg) -> Value {
    let (direction, bincode, json) = match msg {
        Msg::Client(m) => ("client", Encoding::Bincode.encode_client(m), Encoding::Json.encode_client(m)),
        Msg::Server(m) => ("server", Encoding::Bincode.encode_server(m), Encoding::Json.encode_server(m)),
    };
    let json: Value = serde_json::from_slice(&json).unwrap();
    json!({ "name": name, "direction": direction, "bincode": hex(&bincode), "json": json })
}

#[test]
fn golden_frames_are_what_the_server_writes_and_reads() {
    let made: Vec<Value> = messages().iter().map(|(name, msg)| entry(name, msg)).collect();
    let text = serde_json::to_string_pretty(&made).unwrap() + "\n";
    if std::env::var_os("GAIA_BLESS").is_some() {
        std::fs::write(PATH, &text).unwrap();
    }
    let file = std::fs::read_to_string(PATH).unwrap_or_default();
    assert!(file == text, "{PATH} is out of date: run GAIA_BLESS=1 cargo test -p gaia-api --test frames");

    // Both encodings of each entry decode to the message.
    for ((name, msg), entry) in messages().iter().zip(&made) {
        let bincode = unhex(entry["bincode"].as_str().unwrap());
        let json = entry["json"].to_string();
        match msg {
            Msg::Client(m) => {
                assert_eq!(&Encoding::Bincode.decode_client::<Action>(&bincode).unwrap(), m, "{name}");
                assert_eq!(&Encoding::Json.decode_client::<Action>(json.as_bytes()).unwrap(), m, "{name}");
            }
            Msg::Server(m) => {
                assert_eq!(&Encoding::Bincode.decode_server::<Snapshot, Change>(&bincode).unwrap(), m, "{name}");
                assert_eq!(&Encoding::Json.decode_server::<Snapshot, Change>(json.as_bytes()).unwrap(), m, "{name}");
            }
        }
    }
}

#[test]
fn bad_json_frames_are_named() {
    let decode = |text: &str| Encoding::Json.decode_client::<Action>(text.as_bytes()).unwrap_err().to_string();
    assert!(decode(r#"{"type":"fly"}"#).contains("unknown variant `fly`"), "{}", decode(r#"{"type":"fly"}"#));
    assert!(decode(r#"{"type":"ping","nonce":1,"extra":2}"#).contains("unknown field `extra`"));
    assert!(decode(r#"{"type":"ping","nonce":1.5}"#).starts_with("malformed frame"));
    assert!(decode(r#"{"type":"input","seq":1,"action":{"type":"move","dx":300,"dy":0}}"#).contains("300"));
    assert!(decode("not json").starts_with("malformed frame"));
    let big = format!(r#"{{"type":"join","token":"{}"}}"#, "t".repeat(5000));
    assert_eq!(decode(&big), format!("frame of {} bytes exceeds the limit of 4096 bytes", big.len()));
}
