//! docs/worlds.md quotes gameserver/examples/counter.rs; this keeps the quotes true.
//! Every ```rust block in the page must appear in the example verbatim, except blocks
//! that elide with `// ...` (then each of their other lines must appear).

#[test]
fn worlds_md_quotes_the_counter_example() {
    let doc = include_str!("../../docs/worlds.md");
    let example = include_str!("../examples/counter.rs");
    let blocks: Vec<&str> = doc.split("```rust\n").skip(1).filter_map(|rest| rest.split("```").next()).collect();
    assert!(blocks.len() >= 3, "expected the types, the impl and the tests in docs/worlds.md");
    for block in blocks {
        if block.contains("// ...") {
            for line in block.lines().filter(|l| !l.trim().is_empty() && l.trim() != "// ...") {
                assert!(example.contains(line.trim()), "docs/worlds.md line not in the example: {line}");
            }
        } else {
            assert!(example.contains(block), "docs/worlds.md block not in the example:\n{block}");
        }
    }
}
