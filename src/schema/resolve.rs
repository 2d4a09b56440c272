//! Upcasting: reading a stored payload, written with one schema version, as another.
//!
//! This is Avro schema resolution applied to keel's JSON payloads (which [`super::json`] has
//! already normalised against the writer's schema): reader fields the writer lacked get their
//! defaults, renamed fields follow their aliases, numbers are promoted, unknown enum symbols take
//! the reader's default, and writer-only fields are dropped. Stored events are never rewritten.

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
    Resolver { writer, reader }.resolve(writer.schema(), reader.schema(), value, "$")
}

struct Resolver<'a> {
    writer: &'a ParsedSchema,
    reader: &'a ParsedSchema,
}

fn fail<T>(path: &str, reason: impl Into<String>) -> Result<T, ResolveError> {
    Err(ResolveError {
        path: path.to_owned(),
        reason: reason.into(),
    })
}

impl Resolver<'_> {
    fn resolve(
        &self,
        w: &Schema,
        r: &Schema,
        value: &Value,
        path: &str,
    ) -> Result<Value, ResolveError> {
        let (w, r) = (self.writer.deref(w), self.reader.deref(r));
        match (w, r) {
            (Schema::Union(wu), _) => {
                match wu.variants().iter().find(|b| fits(self.writer, b, value)) {
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
                let given = value.as_object().cloned().unwrap_or_default();
                let mut out = Map::with_capacity(rr.fields.len());
                for field in &rr.fields {
                    let field_path = format!("{path}.{}", field.name);
                    let v = match (writer_field(wr, field), &field.default) {
                        (Some(wf), _) => {
                            let v = given.get(&wf.name).unwrap_or(&Value::Null);
                            self.resolve(&wf.schema, &field.schema, v, &field_path)?
                        }
                        (None, Some(default)) => default.clone(),
                        (None, None) => {
                            return fail(
                                &field_path,
                                "the writer has no such field and the reader no default",
                            )
                        }
                    };
                    out.insert(field.name.clone(), v);
                }
                Ok(Value::Object(out))
            }
            (Schema::Enum(_), Schema::Enum(re)) => match value.as_str() {
                Some(s) if re.symbols.iter().any(|sym| sym == s) => Ok(value.clone()),
                _ => match &re.default {
                    Some(default) => Ok(Value::String(default.clone())),
                    None => fail(path, format!("symbol {value} is not in the reader's enum")),
                },
            },
            (Schema::Array(wa), Schema::Array(ra)) => {
                let items = value.as_array().cloned().unwrap_or_default();
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        self.resolve(&wa.items, &ra.items, item, &format!("{path}[{i}]"))
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Value::Array)
            }
            (Schema::Map(wm), Schema::Map(rm)) => {
                let entries = value.as_object().cloned().unwrap_or_default();
                let mut out = Map::with_capacity(entries.len());
                for (key, item) in &entries {
                    out.insert(
                        key.clone(),
                        self.resolve(&wm.types, &rm.types, item, &format!("{path}.{key}"))?,
                    );
                }
                Ok(Value::Object(out))
            }
            // int or long read as float or double: a JSON number either way, now a fractional one.
            (_, Schema::Float | Schema::Double) => match value.as_f64() {
                Some(n) => Ok(serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)),
                None => fail(path, "expected a number"),
            },
            // Same type, or string <-> bytes, or int -> long: the JSON does not change.
            _ => Ok(value.clone()),
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
    }
}
