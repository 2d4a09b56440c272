//! The compatibility rules, one table row per rule, each with an accepting and a refusing case.

use super::*;

fn parse(s: &str) -> ParsedSchema {
    ParsedSchema::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// A record `r` with one field `f` of the given type.
fn field(ty: &str) -> String {
    format!(r#"{{"type":"record","name":"r","fields":[{{"name":"f","type":{ty}}}]}}"#)
}

fn record(name: &str, fields: &str) -> String {
    format!(r#"{{"type":"record","name":"{name}","fields":[{fields}]}}"#)
}

/// `None` = compatible; `Some((kind, path))` = exactly that one incompatibility.
type Expected = Option<(Kind, &'static str)>;

/// `(rule, writer, reader, expected)`
fn table() -> Vec<(&'static str, String, String, Expected)> {
    use Kind::*;
    let color = |symbols: &str, default: &str| {
        format!(r#"{{"type":"enum","name":"Color","symbols":[{symbols}]{default}}}"#)
    };
    vec![
        ("same primitive", field(r#""int""#), field(r#""int""#), None),
        ("int promotes to long", field(r#""int""#), field(r#""long""#), None),
        ("int promotes to float", field(r#""int""#), field(r#""float""#), None),
        ("int promotes to double", field(r#""int""#), field(r#""double""#), None),
        ("long promotes to float", field(r#""long""#), field(r#""float""#), None),
        ("long promotes to double", field(r#""long""#), field(r#""double""#), None),
        ("float promotes to double", field(r#""float""#), field(r#""double""#), None),
        ("string reads as bytes", field(r#""string""#), field(r#""bytes""#), None),
        ("bytes reads as string", field(r#""bytes""#), field(r#""string""#), None),
        ("long does not narrow to int", field(r#""long""#), field(r#""int""#), Some((TypeMismatch, "$.f"))),
        ("double does not narrow to float", field(r#""double""#), field(r#""float""#), Some((TypeMismatch, "$.f"))),
        ("string is not int", field(r#""string""#), field(r#""int""#), Some((TypeMismatch, "$.f"))),
        ("boolean is not int", field(r#""boolean""#), field(r#""int""#), Some((TypeMismatch, "$.f"))),
        ("long is not string", field(r#""long""#), field(r#""string""#), Some((TypeMismatch, "$.f"))),
        // records and field defaults
        ("reader adds a field with a default", record("r", r#"{"name":"a","type":"int"}"#),
            record("r", r#"{"name":"a","type":"int"},{"name":"b","type":"string","default":"x"}"#), None),
        ("reader adds a field without a default", record("r", r#"{"name":"a","type":"int"}"#),
            record("r", r#"{"name":"a","type":"int"},{"name":"b","type":"string"}"#), Some((ReaderFieldMissingDefaultValue, "$.b"))),
        ("reader drops a writer field", record("r", r#"{"name":"a","type":"int"},{"name":"b","type":"int"}"#),
            record("r", r#"{"name":"a","type":"int"}"#), None),
        ("reader renames a field with an alias", record("r", r#"{"name":"a","type":"int"}"#),
            record("r", r#"{"name":"z","type":"int","aliases":["a"]}"#), None),
        ("reader renames a field without an alias", record("r", r#"{"name":"a","type":"int"}"#),
            record("r", r#"{"name":"z","type":"int"}"#), Some((ReaderFieldMissingDefaultValue, "$.z"))),
        ("record renamed", record("r", r#"{"name":"a","type":"int"}"#), record("s", r#"{"name":"a","type":"int"}"#),
            Some((NameMismatch, "$"))),
        ("record renamed with an alias", record("r", r#"{"name":"a","type":"int"}"#),
            r#"{"type":"record","name":"s","aliases":["r"],"fields":[{"name":"a","type":"int"}]}"#.into(), None),
        ("namespace change keeps the unqualified name", r#"{"type":"record","name":"a.r","fields":[]}"#.into(),
            r#"{"type":"record","name":"b.r","fields":[]}"#.into(), None),
        ("nested record field type changes", field(&record("inner", r#"{"name":"x","type":"int"}"#)),
            field(&record("inner", r#"{"name":"x","type":"string"}"#)), Some((TypeMismatch, "$.f.x"))),
        // enums
        ("reader adds an enum symbol", field(&color(r#""RED""#, "")), field(&color(r#""RED","BLUE""#, "")), None),
        ("writer symbol missing from the reader", field(&color(r#""RED","BLUE""#, "")), field(&color(r#""RED""#, "")),
            Some((MissingEnumSymbols, "$.f"))),
        ("writer symbol missing, reader has a default", field(&color(r#""RED","BLUE""#, "")),
            field(&color(r#""RED""#, r#","default":"RED""#)), None),
        ("enum renamed", field(&color(r#""RED""#, "")), field(r#"{"type":"enum","name":"Colour","symbols":["RED"]}"#),
            Some((NameMismatch, "$.f"))),
        // fixed
        ("fixed of the same size", field(r#"{"type":"fixed","name":"h","size":16}"#), field(r#"{"type":"fixed","name":"h","size":16}"#), None),
        ("fixed changes size", field(r#"{"type":"fixed","name":"h","size":16}"#), field(r#"{"type":"fixed","name":"h","size":32}"#),
            Some((FixedSizeMismatch, "$.f"))),
        ("fixed renamed", field(r#"{"type":"fixed","name":"h","size":16}"#), field(r#"{"type":"fixed","name":"g","size":16}"#),
            Some((NameMismatch, "$.f"))),
        // arrays and maps
        ("array items promote", field(r#"{"type":"array","items":"int"}"#), field(r#"{"type":"array","items":"long"}"#), None),
        ("array items narrow", field(r#"{"type":"array","items":"long"}"#), field(r#"{"type":"array","items":"int"}"#),
            Some((TypeMismatch, "$.f[]"))),
        ("map values promote", field(r#"{"type":"map","values":"float"}"#), field(r#"{"type":"map","values":"double"}"#), None),
        ("map values change", field(r#"{"type":"map","values":"string"}"#), field(r#"{"type":"map","values":"int"}"#),
            Some((TypeMismatch, "$.f{}"))),
        ("array is not map", field(r#"{"type":"array","items":"int"}"#), field(r#"{"type":"map","values":"int"}"#),
            Some((TypeMismatch, "$.f"))),
        // unions
        ("union branches promote", field(r#"["null","int"]"#), field(r#"["null","long"]"#), None),
        ("reader union gains a branch", field(r#"["null","int"]"#), field(r#"["null","int","string"]"#), None),
        ("writer union branch without a reader branch", field(r#"["null","string"]"#), field(r#"["null","int"]"#),
            Some((MissingUnionBranch, "$.f"))),
        ("non-union writer, reader union has it", field(r#""int""#), field(r#"["null","long"]"#), None),
        ("non-union writer, reader union lacks it", field(r#""string""#), field(r#"["null","int"]"#),
            Some((MissingUnionBranch, "$.f"))),
        ("writer union read as a non-union", field(r#"["null","int"]"#), field(r#""int""#), Some((TypeMismatch, "$.f<0>"))),
        ("single-branch writer union read as a non-union", field(r#"["int"]"#), field(r#""long""#), None),
        // logical types resolve as their underlying types
        ("uuid reads as string", field(r#"{"type":"string","logicalType":"uuid"}"#), field(r#""string""#), None),
        ("timestamp-millis reads as long", field(r#"{"type":"long","logicalType":"timestamp-millis"}"#), field(r#""long""#), None),
        ("date promotes to long", field(r#"{"type":"int","logicalType":"date"}"#), field(r#""long""#), None),
        ("timestamp does not narrow to int", field(r#"{"type":"long","logicalType":"timestamp-millis"}"#), field(r#""int""#),
            Some((TypeMismatch, "$.f"))),
        ("decimal keeps precision and scale", field(r#"{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}"#),
            field(r#"{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}"#), None),
        ("decimal changes scale", field(r#"{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}"#),
            field(r#"{"type":"bytes","logicalType":"decimal","precision":12,"scale":4}"#), Some((TypeMismatch, "$.f"))),
        // named references and recursion
        ("recursive records", r#"{"type":"record","name":"node","fields":[{"name":"v","type":"int"},{"name":"next","type":["null","node"],"default":null}]}"#.into(),
            r#"{"type":"record","name":"node","fields":[{"name":"v","type":"long"},{"name":"next","type":["null","node"],"default":null}]}"#.into(), None),
        ("a referenced type changes", record("r", r#"{"name":"a","type":{"type":"enum","name":"E","symbols":["X","Y"]}},{"name":"b","type":"E"}"#),
            record("r", r#"{"name":"a","type":{"type":"enum","name":"E","symbols":["X","Y"]}},{"name":"b","type":"string","default":""}"#),
            Some((TypeMismatch, "$.b"))),
    ]
}

/// For each row of [`table`], in the same order: can the row's *reader* schema's data be read with
/// the row's *writer* schema? (The other direction, which the forward modes check.)
const REVERSE: [bool; 50] = [
    true, false, false, false, false, false, false, true, true, true, true, false, false, false,
    true, true, false, false, false, false, false, true, false, false, true, true, false, true,
    false, false, false, true, false, false, false, false, false, false, false, false, true, false,
    true, true, false, true, true, false, false, false,
];

#[test]
fn every_mode_times_every_rule() {
    let rows = table();
    assert_eq!(rows.len(), REVERSE.len(), "one reverse answer per row");
    for ((rule, old, new, expected), reverse) in rows.into_iter().zip(REVERSE) {
        let (old, new) = (parse(&old), parse(&new));
        let backward = expected.is_none();
        for mode in Compatibility::ALL {
            let want = match mode {
                Compatibility::Backward | Compatibility::BackwardTransitive => backward,
                Compatibility::Forward | Compatibility::ForwardTransitive => reverse,
                Compatibility::Full | Compatibility::FullTransitive => backward && reverse,
                Compatibility::None => true,
            };
            let found = mode.check(&new, &[(1, &old)]);
            assert_eq!(found.is_empty(), want, "{rule} under {mode}: {found:?}");
        }
    }
}

#[test]
fn every_resolution_rule_accepts_and_refuses_as_the_specification_says() {
    for (rule, writer, reader, expected) in table() {
        let found = can_read(&parse(&writer), &parse(&reader));
        match expected {
            None => assert!(
                found.is_empty(),
                "{rule}: expected compatible, got {found:?}"
            ),
            Some((kind, path)) => {
                assert_eq!(found.len(), 1, "{rule}: {found:?}");
                assert_eq!(
                    (found[0].kind, found[0].path.as_str()),
                    (kind, path),
                    "{rule}: {}",
                    found[0].message
                );
            }
        }
    }
}

#[test]
fn a_rejection_names_the_field_and_the_rule() {
    let found = can_read(
        &parse(&record("r", r#"{"name":"a","type":"int"}"#)),
        &parse(&record(
            "r",
            r#"{"name":"a","type":"int"},{"name":"status","type":"string"}"#,
        )),
    );
    assert_eq!(
        found[0].to_string(),
        "$.status: the reader's field status has no default and the writer has no such field"
    );
}

/// Three versions where only the transitive mode notices that v3 cannot read v1's data
/// (confluentinc/schema-registry#438).
fn history() -> (ParsedSchema, ParsedSchema, ParsedSchema) {
    (
        parse(&record("r", r#"{"name":"a","type":"string"}"#)),
        parse(&record("r", "")),
        parse(&record("r", r#"{"name":"a","type":"int","default":0}"#)),
    )
}

#[test]
fn each_mode_checks_the_versions_and_directions_it_names() {
    let (v1, v2, v3) = history();
    let existing = [(1, &v1), (2, &v2)];
    let outcome = |mode: Compatibility| mode.check(&v3, &existing).len();
    assert_eq!(outcome(Compatibility::Backward), 0, "v3 reads v2's data");
    assert_eq!(
        outcome(Compatibility::BackwardTransitive),
        1,
        "v3 cannot read v1's data"
    );
    assert_eq!(
        outcome(Compatibility::Forward),
        0,
        "v2 reads v3's data, ignoring a"
    );
    assert_eq!(
        outcome(Compatibility::ForwardTransitive),
        1,
        "v1 cannot read v3's data: a is int, not string"
    );
    assert_eq!(outcome(Compatibility::Full), 0);
    assert_eq!(outcome(Compatibility::FullTransitive), 2);
    assert_eq!(outcome(Compatibility::None), 0);

    let message = &Compatibility::BackwardTransitive.check(&v3, &existing)[0].message;
    assert!(
        message.starts_with("new schema cannot read data written with version 1"),
        "{message}"
    );
}

#[test]
fn forward_refuses_removing_a_field_the_old_reader_needs() {
    let old = parse(&record("r", r#"{"name":"a","type":"int"}"#));
    let new = parse(&record("r", r#"{"name":"b","type":"int","default":1}"#));
    assert_eq!(Compatibility::Backward.check(&new, &[(1, &old)]).len(), 0);
    let forward = Compatibility::Forward.check(&new, &[(1, &old)]);
    assert_eq!(forward[0].kind, Kind::ReaderFieldMissingDefaultValue);
    assert_eq!(forward[0].path, "$.a");
}

#[test]
fn modes_have_confluent_names() {
    for mode in Compatibility::ALL {
        assert_eq!(Compatibility::parse(mode.as_str()), Some(mode));
        assert_eq!(serde_json::to_value(mode).unwrap(), mode.as_str());
    }
    assert_eq!(Compatibility::parse("backward"), None);
}

/// Ten levels of records, each with ten optional references to the next. Checking it must visit
/// each type once: a check that re-explored union branches per reference would take ~10^10 steps.
#[test]
fn deeply_nested_unions_of_records_are_checked_once_per_type() {
    let chain = |doc: &str| {
        let mut schema =
            r#"{"type":"record","name":"t10","fields":[{"name":"v","type":"int"}]}"#.to_owned();
        for level in (0..10).rev() {
            let mut fields = vec![format!(
                r#"{{"name":"f0","type":["null",{schema}],"default":null}}"#
            )];
            for i in 1..10 {
                fields.push(format!(
                    r#"{{"name":"f{i}","type":["null","t{}"],"default":null}}"#,
                    level + 1
                ));
            }
            schema = format!(
                r#"{{"type":"record","name":"t{level}","doc":"{doc}","fields":[{}]}}"#,
                fields.join(",")
            );
        }
        parse(&schema)
    };
    let (old, new) = (chain("old"), chain("new"));
    assert!(Compatibility::FullTransitive
        .check(&new, &[(1, &old)])
        .is_empty());
}
