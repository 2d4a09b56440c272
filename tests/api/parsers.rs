//! Property tests of the parsers that take untrusted text (names, patterns, keys, cursors,
//! grants, schemas): on random and adversarial input they return an error, never panic, and
//! what they accept round-trips. Seeded, so a failure reproduces; `KEEL_PROPTEST_CASES` runs
//! more cases (the default keeps CI fast).

use keel::auth::{ApiKey, Grant, PrincipalName};
use keel::model::{AggregateType, EventType, Pattern, VersionSpec};
use keel::schema::ParsedSchema;
use keel::store::LogCursor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn cases() -> usize {
    std::env::var("KEEL_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

/// Text that looks like what the parsers expect often enough to reach their deeper branches:
/// pieces of keys, patterns and cursors, with control characters, NULs, multi-byte and
/// invalid-looking sequences mixed in.
fn adversarial(rng: &mut StdRng) -> String {
    const PIECES: &[&str] = &[
        "keel_",
        "_",
        "*",
        "a",
        "z",
        "0",
        "f",
        ".",
        "-",
        "@",
        "..",
        "/",
        "\\",
        "%2e",
        "\0",
        "\r\n",
        " ",
        "ä",
        "😀",
        "\u{202e}",
        "v1:",
        ":",
        "=",
        "AAAA",
        "{",
        "}",
        "[",
        "]",
        "\"",
        "'",
        "--",
        "0123456789abcdef",
    ];
    let len = rng.gen_range(0..24);
    let mut s = String::new();
    for _ in 0..len {
        if rng.gen_bool(0.8) {
            s.push_str(PIECES[rng.gen_range(0..PIECES.len())]);
        } else {
            s.push(char::from_u32(rng.gen_range(0..0x11_0000)).unwrap_or('x'));
        }
    }
    s
}

#[test]
fn name_and_pattern_parsers_never_panic_and_round_trip() {
    let mut rng = StdRng::seed_from_u64(11);
    for _ in 0..cases() {
        let text = adversarial(&mut rng);
        if let Ok(p) = Pattern::parse(&text) {
            assert_eq!(Pattern::parse(&p.to_string()), Ok(p.clone()), "{text:?}");
            assert!(
                !text.contains(|c: char| c.is_control() || c == ' '),
                "{text:?}"
            );
        }
        if let Ok(name) = AggregateType::parse(text.clone()) {
            assert_eq!(name.as_str(), text);
            assert!(text.bytes().all(|b| b.is_ascii_graphic()), "{text:?}");
        }
        let _ = EventType::parse(text.clone());
        if let Ok(name) = PrincipalName::parse(&text) {
            assert!(!name.as_str().contains(['/', '\\', '\0', ' ']), "{text:?}");
        }
        let _ = VersionSpec::parse(&text);
        let _ = Grant::parse("allow", &text, &text, "*");
        let _ = Grant::parse(&text, "event.read", "*", &text);
    }
}

#[test]
fn api_keys_parse_only_their_own_shape_and_generated_ones_round_trip() {
    let mut rng = StdRng::seed_from_u64(12);
    for _ in 0..cases() {
        let text = adversarial(&mut rng);
        if let Ok(key) = ApiKey::parse(&text) {
            assert_eq!(key.expose_secret(), text, "only the canonical form parses");
        }
    }
    for _ in 0..200 {
        let key = ApiKey::generate().unwrap();
        let text = key.expose_secret();
        let parsed = ApiKey::parse(&text).unwrap();
        assert_eq!(parsed.id(), key.id());
        // One flipped character anywhere makes it another key or no key.
        let mut bytes = text.into_bytes();
        let at = rng.gen_range(0..bytes.len());
        bytes[at] = if bytes[at] == b'0' { b'g' } else { b'0' };
        let flipped = String::from_utf8(bytes).unwrap();
        if let Ok(other) = ApiKey::parse(&flipped) {
            assert_ne!(other.expose_secret(), key.expose_secret());
        }
    }
}

#[test]
fn cursors_decode_only_what_keel_encoded() {
    let mut rng = StdRng::seed_from_u64(13);
    for _ in 0..cases() {
        let text = adversarial(&mut rng);
        if let Some(cursor) = LogCursor::decode(&text) {
            assert_eq!(LogCursor::decode(&cursor.encode()), Some(cursor));
        }
        let cursor = LogCursor {
            tx_id: rng.gen_range(0..i64::MAX),
            position: rng.gen_range(0..i64::MAX),
        };
        assert_eq!(LogCursor::decode(&cursor.encode()), Some(cursor));
    }
}

#[test]
fn the_schema_parser_refuses_deep_or_huge_schemas_without_overflowing_its_stack() {
    let mut rng = StdRng::seed_from_u64(14);
    // Random nesting of arrays, maps, unions and records, some far past the depth cap.
    for _ in 0..200 {
        let depth = rng.gen_range(1..10_000);
        let mut schema = String::from("\"string\"");
        for level in 0..depth {
            schema = match rng.gen_range(0..4) {
                0 => format!("{{\"type\":\"array\",\"items\":{schema}}}"),
                1 => format!("{{\"type\":\"map\",\"values\":{schema}}}"),
                2 => format!("[\"null\",{schema}]"),
                _ => format!(
                    "{{\"type\":\"record\",\"name\":\"r{level}\",\"fields\":[{{\"name\":\"f\",\"type\":{schema}}}]}}"
                ),
            };
        }
        let parsed = ParsedSchema::parse(&schema);
        if depth > 64 {
            assert!(parsed.is_err(), "a schema {depth} deep was accepted");
        }
    }
    // And random text.
    for _ in 0..cases() / 10 {
        let _ = ParsedSchema::parse(&adversarial(&mut rng));
    }
}
