#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns
//! docs/protocol.md cannot drift from the code: each example frame on the page (a
//! ```` ```frame ```` block of `name:`, `bincode:` and `json:` lines) is the golden frame of
//! that name in `protocol/frames.json` (which `frames.rs` holds to the code), in both
//! encodings, and the page names every message and variant the code has.

use serde_json::Value;

const PAGE: &str = include_str!("../../docs/protocol.md");
const FRAMES: &str = include_str!("../../protocol/frames.json");

/// The page's example blocks: (name, bincode hex, json text).
fn examples() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut lines = PAGE.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "```frame" {
            continue;
        }
        let mut field = |key: &str| {
            let line = lines.next().unwrap_or_default();
            line.strip_prefix(key)
                .unwrap_or_else(|| panic!("expected `{key}` in an example, got {line:?}"))
                .trim()
                .to_string()
        };
        let (name, bincode, json) = (field("name:"), field("bincode:"), field("json:"));
        assert_eq!(lines.next().map(str::trim), Some("```"), "example {name} has more lines");
        out.push((name, bincode, json));
    }
    out
}

#[test]
fn the_page_examples_are_the_golden_frames() {
    let frames: Vec<Value> = serde_json::from_str(FRAMES).unwrap();
    let examples = examples();
    assert!(examples.len() >= 10, "only {} examples on the page", examples.len());
    for (name, bincode, json) in examples {
        let frame =
            frames.iter().find(|f| f["name"] == name.as_str()).unwrap_or_else(|| panic!("no golden frame {name:?}"));
        assert_eq!(frame["bincode"].as_str(), Some(bincode.as_str()), "{name}: bincode");
        let json: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(frame["json"], json, "{name}: json");
    }
}

#[test]
fn the_page_names_every_message_and_variant() {
    for name in [
        "`Join`",
        "`Input`",
        "`Ping`",
        "`Welcome`",
        "`Delta`",
        "`Resync`",
        "`InputResult`",
        "`Migrate`",
        "`Error`",
        "`Pong`",
        "`Ok`",
        "`Rejected",
        "`Move`",
        "`Say`",
        "`Bot`",
        "`Player`",
        "`Joined`",
        "`Moved`",
        "`Left`",
        "`Said`",
        "`Greeted`",
        "`Parted`",
        "gaia.v1.bincode",
        "gaia.v1.json",
    ] {
        assert!(PAGE.contains(name), "docs/protocol.md does not name {name}");
    }
    for code in 4001..=gaia_api::protocol::close::REPLACED {
        assert!(PAGE.contains(&format!("| {code} |")), "docs/protocol.md has no row for close code {code}");
    }
}

/// The page's tables give each message's variant index: the byte after the version.
#[test]
fn the_page_gives_each_message_its_variant_index() {
    let frames: Vec<Value> = serde_json::from_str(FRAMES).unwrap();
    for frame in frames {
        let index = u8::from_str_radix(frame["bincode"].as_str().unwrap().split(' ').nth(1).unwrap(), 16).unwrap();
        let kind = frame["json"]["type"].as_str().unwrap();
        let name = kind[..1].to_uppercase() + &kind[1..];
        let row = format!("| {index} | `{name}` |");
        assert!(PAGE.contains(&row), "docs/protocol.md has no row {row}");
    }
}
