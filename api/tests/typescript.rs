#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns
//! The TypeScript client's wire types, `clients/typescript/src/generated/`, are what ts-rs
//! makes of the Rust types: one file per module of this crate (the `#[ts(export_to)]` of
//! each type), holding the JSON form serde writes and reads. The client's codecs are
//! type-checked against them, so a change here that the TypeScript side does not follow
//! fails its `npm test`.
//!
//! After changing a wire type, run `GAIA_BLESS=1 cargo test -p gaia-api --test typescript`
//! and commit the files it writes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use gaia_api::{activity, allocation, gameserver, protocol, town};
use ts_rs::{Config, Dummy, TS};

const COMMAND: &str = "GAIA_BLESS=1 cargo test -p gaia-api --test typescript";
/// The generated files' folder, from the repository's root.
const DIR: &str = "clients/typescript/src/generated";

/// serde_json writes a `u64` as a plain JSON number, and `JSON.parse` reads one as a JS
/// `number`, so that is the type TypeScript sees, not ts-rs' default `bigint`. A number is
/// exact up to 2^53; docs/protocol.md §7 says which fields could pass that and what a
/// client does then.
fn config() -> Config {
    Config::new().with_large_int("number")
}

/// One generated file: the names it declares, their declarations in order, and what it
/// imports from the others.
#[derive(Default)]
struct Module {
    names: BTreeSet<String>,
    decls: Vec<String>,
    imports: BTreeMap<PathBuf, BTreeSet<String>>,
}

/// Every file with the module it comes from, each type where its `export_to` puts it.
fn modules() -> BTreeMap<PathBuf, (&'static str, Module)> {
    let cfg = config();
    let mut files: BTreeMap<PathBuf, (&str, Module)> = BTreeMap::new();
    let mut used = Vec::new();
    let mut add = |source, name, decl, path: Option<PathBuf>, deps: Vec<ts_rs::Dependency>| {
        let path = path.unwrap();
        let (_, module) = files.entry(path.clone()).or_insert_with(|| (source, Module::default()));
        module.names.insert(name);
        module.decls.push(decl);
        for dep in deps {
            if dep.output_path != path {
                module.imports.entry(dep.output_path.clone()).or_default().insert(dep.ts_name.clone());
            }
            used.push(dep);
        }
    };
    macro_rules! types {
        ($source:literal: $($ty:ty),* $(,)?) => {
            $(add(
                $source,
                <$ty>::ident(&cfg),
                declaration::<$ty>(&cfg),
                <$ty>::output_path(),
                <$ty>::dependencies(&cfg),
            );)*
        };
    }
    // Generic types are declared generic: `Dummy` only stands in for the parameters.
    types!("api/src/protocol.rs": protocol::ClientMsg<Dummy>, protocol::ServerMsg<Dummy, Dummy>, protocol::InputOutcome);
    types!("api/src/town.rs": town::Action, town::Snapshot, town::Entity, town::EntityKind, town::Change);
    types!("api/src/gameserver.rs": gameserver::GameServerState);
    types!("api/src/activity.rs": activity::WorldMessage, activity::MessagePage);
    types!(
        "api/src/allocation.rs": allocation::AllocationRequest,
        allocation::Selector,
        allocation::LabelExpression,
        allocation::Operator,
        allocation::Strategy,
        allocation::Priority,
        allocation::PriorityKey,
        allocation::Order,
        allocation::AllocationMetadata,
        allocation::AllocationResponse,
        allocation::Lease,
        allocation::BatchAllocationRequest,
        allocation::BatchAllocationResponse,
        allocation::BatchResult,
        allocation::MoveResponse,
        allocation::SpectateResponse,
        allocation::ErrorBody,
        allocation::ErrorDetail,
    );
    for dep in used {
        let declared = files.get(&dep.output_path).is_some_and(|(_, m)| m.names.contains(&dep.ts_name));
        assert!(declared, "{} is used but not declared: list it in modules()", dep.ts_name);
    }
    files
}

/// The type's doc comment (as JSDoc) and its `export type` declaration.
fn declaration<T: TS + 'static>(cfg: &Config) -> String {
    let decl = T::decl(cfg);
    let (name, body) = decl.split_once(" = ").unwrap();
    let body = body.trim().strip_suffix(';').unwrap();
    let sep = if split(body, '|').len() > 1 && !fits(body, 0) { " =" } else { " = " };
    format!("{}export {name}{sep}{};", T::docs().unwrap_or_default(), layout(body, 0))
}

// ts-rs writes a declaration on one line, with the fields' doc comments inside it. These
// lay it out one variant of a long union, and one field of a long or documented object, a
// line, so that a change to a type shows in the diff as a change to its line.

const WIDTH: usize = 100;

fn fits(ty: &str, indent: usize) -> bool {
    !ty.contains("/**") && indent * 2 + flat(ty).len() <= WIDTH
}

/// `ty` on one line, with single spaces and no `, }`.
fn flat(ty: &str) -> String {
    ty.split_whitespace().collect::<Vec<_>>().join(" ").replace(", }", " }")
}

/// The parts of `ty` between the `sep`s outside any brackets, strings and comments.
fn split(ty: &str, sep: char) -> Vec<&str> {
    let (mut parts, mut depth, mut start, mut in_str) = (Vec::new(), 0i32, 0, false);
    let mut chars = ty.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => in_str = !in_str,
            _ if in_str => {}
            '/' if ty[i..].starts_with("/**") => {
                let end = i + ty[i..].find("*/").unwrap() + 2;
                while chars.next_if(|&(j, _)| j < end).is_some() {}
            }
            '{' | '[' | '(' | '<' => depth += 1,
            '}' | ']' | ')' | '>' => depth -= 1,
            _ if c == sep && depth == 0 => {
                parts.push(ty[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(ty[start..].trim());
    parts.retain(|p| !p.is_empty());
    parts
}

fn pad(indent: usize) -> String {
    "  ".repeat(indent)
}

/// `ty`, as it goes after `indent` levels of indentation.
fn layout(ty: &str, indent: usize) -> String {
    let variants = split(ty, '|');
    if variants.len() > 1 {
        if fits(ty, indent) {
            return flat(ty);
        }
        return variants.iter().map(|v| format!("\n{}| {}", pad(indent + 1), layout(v, indent + 2))).collect();
    }
    // One object literal, not an intersection like `{ "type": "joined" } & Entity`.
    let object = ty.strip_prefix('{').and_then(|t| t.strip_suffix('}')).filter(|_| split(ty, '&').len() == 1);
    let Some(inner) = object else {
        return flat(ty);
    };
    if fits(ty, indent) {
        return flat(ty);
    }
    let mut text = String::from("{\n");
    for field in split(inner, ',') {
        let (docs, field) = match field.find("*/") {
            Some(end) => field.split_at(end + 2),
            None => ("", field),
        };
        let docs: Vec<&str> = docs.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        if let ["/**", line, "*/"] = docs[..] {
            text.push_str(&format!("{}/** {} */\n", pad(indent + 1), line.trim_start_matches('*').trim()));
        } else {
            for line in docs {
                let space = if line.starts_with('*') { " " } else { "" };
                text.push_str(&format!("{}{space}{line}\n", pad(indent + 1)));
            }
        }
        let (name, ty) = field.trim().split_once(": ").unwrap();
        text.push_str(&format!("{}{name}: {},\n", pad(indent + 1), layout(ty, indent + 1)));
    }
    text + &pad(indent) + "}"
}

fn render(source: &str, module: &Module) -> String {
    let mut text = format!(
        "// Generated by `{COMMAND}` from {source}; do not edit.\n\
         // The JSON form (docs/protocol.md §7); u64 fields are `number`s, exact up to 2^53.\n"
    );
    for (from, names) in &module.imports {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let from = from.file_stem().unwrap().to_str().unwrap();
        text.push_str(&format!("import type {{ {} }} from \"./{from}.js\";\n", names.join(", ")));
    }
    for decl in &module.decls {
        text.push('\n');
        text.push_str(decl);
        text.push('\n');
    }
    text
}

#[test]
fn generated_typescript_is_what_the_rust_types_make() {
    let dir = &Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(DIR);
    let made: Vec<(PathBuf, String)> =
        modules().iter().map(|(path, (source, module))| (dir.join(path), render(source, module))).collect();
    if std::env::var_os("GAIA_BLESS").is_some() {
        std::fs::create_dir_all(dir).unwrap();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if !made.iter().any(|(p, _)| *p == path) {
                std::fs::remove_file(path).unwrap();
            }
        }
        for (path, text) in &made {
            std::fs::write(path, text).unwrap();
        }
    }
    for (path, text) in &made {
        let file = std::fs::read_to_string(path).unwrap_or_default();
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(file == *text, "{DIR}/{name} is out of date: run `{COMMAND}` and commit the result");
    }
    // No file left over from a type that moved or went away.
    let mut committed: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    committed.sort();
    let made: Vec<PathBuf> = made.into_iter().map(|(p, _)| p).collect();
    assert!(committed == made, "{DIR} holds files no type makes: run `{COMMAND}`");
}

/// The generated types say what the JSON carries; spot checks of the parts where ts-rs'
/// defaults would not (and that the TypeScript codecs rely on).
#[test]
fn the_declarations_follow_serde() {
    let cfg = config();
    let decl = |s: String| s.split_whitespace().collect::<Vec<_>>().join(" ");
    // Internally tagged, camelCase tags and fields.
    let client = decl(protocol::ClientMsg::<Dummy>::decl(&cfg));
    assert!(client.contains(r#"{ "type": "ping", nonce: number, }"#), "{client}");
    let server = decl(protocol::ServerMsg::<Dummy, Dummy>::decl(&cfg));
    assert!(server.contains(r#"{ "type": "delta", tick: number, serverUs: number, changes: Array<C>, }"#), "{server}");
    // A newtype variant's fields sit beside the tag.
    let change = decl(town::Change::decl(&cfg));
    assert!(change.contains(r#"{ "type": "joined" } & Entity"#), "{change}");
    // Request fields with a serde default may be left out; response fields are always there.
    let request = decl(allocation::AllocationRequest::decl(&cfg));
    assert!(request.contains("fleet: string,") && request.contains("worldId?: string | null,"), "{request}");
    assert!(request.contains("regions?: Array<string>,"), "{request}");
    let response = decl(allocation::AllocationResponse::decl(&cfg));
    assert!(response.contains("lease: Lease | null,") && response.contains("epoch: number,"), "{response}");
    let result = decl(allocation::BatchResult::decl(&cfg));
    assert!(result.contains("allocation?: AllocationResponse,"), "{result}");
}
