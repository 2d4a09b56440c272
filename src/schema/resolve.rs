//! Upcasting: reading a stored payload, written with one schema version, as another.
//!
//! This is Avro schema resolution applied to keel's JSON payloads (which [`super::json`] has
//! already normalised against the writer's schema): reader fields the writer lacked get their
//! defaults, renamed fields follow their aliases, numbers are promoted, unknown enum symbols take
//! the reader's default, and writer-only fields are dropped. Stored events are never rewritten.

use std::borrow::Cow;

use apache_avro::Schema;
use serde_json::{Map, Value};

use super::avro::{writer_field, ParsedSchema};
use super::compat::readable;
use super::json::fits;

/// A payload that cannot be read with the requested schema (the two schemas are incompatible).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct ResolveError {
    pub path: String,
    pub reason: String,
}

/// `value`, written with `writer`, as `reader` sees it.
pub fn resolve(
    writer: &ParsedSchema,
    reader: &ParsedSchema,
    value: &Value,
) -> Result<Value, ResolveError> {
    Resolver { writer, reader }.run(Cow::Borrowed(value))
}

/// As [`resolve`], consuming `value`: what the reader keeps is moved into the result instead of
/// copied, so a reader that drops the value on failure pays for no copies.
pub fn resolve_owned(
    writer: &ParsedSchema,
    reader: &ParsedSchema,
    value: Value,
) -> Result<Value, ResolveError> {
    Resolver { writer, reader }.run(Cow::Owned(value))
}

struct Resolver<'a> {
    writer: &'a ParsedSchema,
    reader: &'a ParsedSchema,
}

/// Where in the payload a value is, written out only when resolving it fails.
#[derive(Clone, Copy)]
enum Path<'a> {
    Root,
    Field(&'a Path<'a>, &'a str),
    Item(&'a Path<'a>, usize),
}

impl std::fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Path::Root => f.write_str("$"),
            Path::Field(parent, name) => write!(f, "{parent}.{name}"),
            Path::Item(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

fn fail<T>(path: Path<'_>, reason: impl Into<String>) -> Result<T, ResolveError> {
    Err(ResolveError {
        path: path.to_string(),
        reason: reason.into(),
    })
}

static NULL: Value = Value::Null;

/// A record's or a map's entries, borrowed or owned as the value was.
fn object(value: Cow<'_, Value>) -> Cow<'_, Map<String, Value>> {
    match value {
        Cow::Borrowed(Value::Object(map)) => Cow::Borrowed(map),
        Cow::Owned(Value::Object(map)) => Cow::Owned(map),
        _ => Cow::Owned(Map::new()),
    }
}

/// The entry `name` of `given` (null when absent): moved out of an owned map unless `copy`, with
/// its key, which the result can then reuse.
fn entry<'v>(
    given: &mut Cow<'v, Map<String, Value>>,
    name: &str,
    copy: bool,
) -> (Cow<'v, Value>, Option<String>) {
    match given {
        Cow::Borrowed(map) => (Cow::Borrowed(map.get(name).unwrap_or(&NULL)), None),
        Cow::Owned(map) if copy => (
            Cow::Owned(map.get(name).cloned().unwrap_or(Value::Null)),
            None,
        ),
        Cow::Owned(map) => match map.remove_entry(name) {
            Some((key, value)) => (Cow::Owned(value), Some(key)),
            None => (Cow::Owned(Value::Null), None),
        },
    }
}

impl Resolver<'_> {
    fn run(&self, value: Cow<'_, Value>) -> Result<Value, ResolveError> {
        self.resolve(
            self.writer.schema(),
            self.reader.schema(),
            value,
            Path::Root,
        )
    }

    fn resolve(
        &self,
        w: &Schema,
        r: &Schema,
        value: Cow<'_, Value>,
        path: Path<'_>,
    ) -> Result<Value, ResolveError> {
        let (w, r) = (self.writer.deref(w), self.reader.deref(r));
        match (w, r) {
            (Schema::Union(wu), _) => {
                match wu.variants().iter().find(|b| fits(self.writer, b, &value)) {
                    Some(branch) => self.resolve(branch, r, value, path),
                    None => fail(path, "the value fits no branch of the writer's union"),
                }
            }
            (_, Schema::Union(ru)) => match ru
                .variants()
                .iter()
                .find(|rb| readable(self.writer, w, self.reader, rb))
            {
                Some(branch) => self.resolve(w, branch, value, path),
                None => fail(
                    path,
                    "no branch of the reader's union reads the writer's type",
                ),
            },
            (Schema::Record(wr), Schema::Record(rr)) => {
                let mut given = object(value);
                // Two reader fields may read the same writer field, one by its name and the other
                // by an alias: a reader with aliases copies what it reads instead of moving it.
                let copy = rr
                    .fields
                    .iter()
                    .any(|f| f.aliases.as_ref().is_some_and(|a| !a.is_empty()));
                let mut out = Map::new();
                for field in &rr.fields {
                    let field_path = Path::Field(&path, &field.name);
                    let (key, v) = match (writer_field(wr, field), &field.default) {
                        (Some(wf), _) => {
                            let (v, key) = entry(&mut given, &wf.name, copy);
                            let v = self.resolve(&wf.schema, &field.schema, v, field_path)?;
                            (key.filter(|k| *k == field.name), v)
                        }
                        (None, Some(default)) => (None, default.clone()),
                        (None, None) => {
                            return fail(
                                field_path,
                                "the writer has no such field and the reader no default",
                            )
                        }
                    };
                    out.insert(key.unwrap_or_else(|| field.name.clone()), v);
                }
                Ok(Value::Object(out))
            }
            (Schema::Enum(_), Schema::Enum(re)) => {
                let known = value
                    .as_str()
                    .is_some_and(|s| re.symbols.iter().any(|sym| sym == s));
                match &re.default {
                    _ if known => Ok(value.into_owned()),
                    Some(default) => Ok(Value::String(default.clone())),
                    None => fail(path, format!("symbol {value} is not in the reader's enum")),
                }
            }
            (Schema::Array(wa), Schema::Array(ra)) => {
                let item =
                    |(i, item)| self.resolve(&wa.items, &ra.items, item, Path::Item(&path, i));
                match value {
                    Cow::Borrowed(Value::Array(items)) => items
                        .iter()
                        .map(Cow::Borrowed)
                        .enumerate()
                        .map(item)
                        .collect(),
                    Cow::Owned(Value::Array(items)) => items
                        .into_iter()
                        .map(Cow::Owned)
                        .enumerate()
                        .map(item)
                        .collect(),
                    _ => Ok(Vec::new()),
                }
                .map(Value::Array)
            }
            (Schema::Map(wm), Schema::Map(rm)) => {
                let mut out = Map::new();
                let mut add = |key: String, item| {
                    let item =
                        self.resolve(&wm.types, &rm.types, item, Path::Field(&path, &key))?;
                    out.insert(key, item);
                    Ok(())
                };
                match object(value) {
                    Cow::Borrowed(entries) => {
                        for (key, item) in entries {
                            add(key.clone(), Cow::Borrowed(item))?;
                        }
                    }
                    Cow::Owned(entries) => {
                        for (key, item) in entries {
                            add(key, Cow::Owned(item))?;
                        }
                    }
                }
                Ok(Value::Object(out))
            }
            // int or long read as float or double: a JSON number either way, now a fractional one.
            (_, Schema::Float | Schema::Double) => match value.as_f64() {
                Some(n) => Ok(serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)),
                None => fail(path, "expected a number"),
            },
            // Same type, or string <-> bytes, or int -> long: the JSON does not change.
            _ => Ok(value.into_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(s: &str) -> ParsedSchema {
        ParsedSchema::parse(s).unwrap()
    }

    #[test]
    fn a_v1_payload_reads_as_v2_with_defaults_aliases_and_promotions() {
        let v1 = parse(
            r#"{"type":"record","name":"r","fields":[
                {"name":"count","type":"int"},
                {"name":"name","type":"string"},
                {"name":"gone","type":"string"},
                {"name":"status","type":{"type":"enum","name":"S","symbols":["A","B","C"]}},
                {"name":"maybe","type":["null","int"]}
            ]}"#,
        );
        let v2 = parse(
            r#"{"type":"record","name":"r","fields":[
                {"name":"count","type":"double"},
                {"name":"title","type":"string","aliases":["name"]},
                {"name":"status","type":{"type":"enum","name":"S","symbols":["A","B","UNKNOWN"],"default":"UNKNOWN"}},
                {"name":"maybe","type":["null","long","string"]},
                {"name":"added","type":["null","string"],"default":null},
                {"name":"region","type":"string","default":"eu"}
            ]}"#,
        );
        let stored = json!({"count": 3, "name": "x", "gone": "y", "status": "C", "maybe": 4});
        let read = resolve(&v1, &v2, &stored).unwrap();
        assert_eq!(resolve_owned(&v1, &v2, stored).unwrap(), read);
        assert_eq!(
            read,
            json!({"count": 3.0, "title": "x", "status": "UNKNOWN", "maybe": 4, "added": null, "region": "eu"})
        );
        assert!(read["count"].is_f64());
    }

    #[test]
    fn reading_with_the_writers_own_schema_changes_nothing() {
        let v1 = parse(
            r#"{"type":"record","name":"r","fields":[{"name":"a","type":["null","string"]},{"name":"m","type":{"type":"map","values":"long"}}]}"#,
        );
        let stored = json!({"a": "x", "m": {"k": 1}});
        assert_eq!(resolve(&v1, &v1, &stored).unwrap(), stored);
        assert_eq!(resolve_owned(&v1, &v1, stored.clone()).unwrap(), stored);
    }

    #[test]
    fn two_reader_fields_may_read_one_writer_field_and_failures_name_their_path() {
        let v1 = parse(
            r#"{"type":"record","name":"r","fields":[
                {"name":"name","type":"string"},
                {"name":"items","type":{"type":"array","items":{"type":"record","name":"i","fields":[
                    {"name":"s","type":{"type":"enum","name":"S","symbols":["A","B"]}}]}}}
            ]}"#,
        );
        let v2 = parse(
            r#"{"type":"record","name":"r","fields":[
                {"name":"name","type":"string"},
                {"name":"title","type":"string","aliases":["name"]},
                {"name":"items","type":{"type":"array","items":{"type":"record","name":"i","fields":[
                    {"name":"s","type":{"type":"enum","name":"S","symbols":["A"]}}]}}}
            ]}"#,
        );
        let fine = json!({"name": "x", "items": [{"s": "A"}]});
        let read = json!({"name": "x", "title": "x", "items": [{"s": "A"}]});
        assert_eq!(resolve(&v1, &v2, &fine).unwrap(), read);
        assert_eq!(resolve_owned(&v1, &v2, fine).unwrap(), read);
        let bad = json!({"name": "x", "items": [{"s": "A"}, {"s": "B"}]});
        for err in [
            resolve(&v1, &v2, &bad).unwrap_err(),
            resolve_owned(&v1, &v2, bad.clone()).unwrap_err(),
        ] {
            assert_eq!(err.path, "$.items[1].s");
            assert!(err.reason.contains("not in the reader's enum"), "{err}");
        }
    }
}
