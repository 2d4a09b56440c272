//! Validating a JSON payload against an Avro schema, with the JSON path of the first problem.
//!
//! keel takes payloads as plain JSON, not Avro's JSON encoding: a union value is given bare
//! (`"x"` or `null`, not `{"string": "x"}`) and takes the first branch it fits. The result is the
//! payload normalised to the schema: fields left out are filled with their defaults, so the stored
//! JSON is exactly the Avro datum.

use apache_avro::Schema;
use serde_json::{Map, Value};

use super::avro::{full_name, primitive, ParsedSchema, Primitive};

/// Where a payload breaks its schema and what the schema wanted there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: expected {expected}")]
pub struct PayloadError {
    /// A JSON path into the payload: `$`, `$.status`, `$.items[2].name`.
    pub path: String,
    pub expected: String,
}

/// Checks `value` against `schema`; returns it normalised (defaults filled in).
pub fn validate(schema: &ParsedSchema, value: &Value) -> Result<Value, PayloadError> {
    Validator { schema }.value(schema.schema(), value, "$")
}

/// Whether `value` fits `node`, a part of `schema`.
pub(crate) fn fits(schema: &ParsedSchema, node: &Schema, value: &Value) -> bool {
    Validator { schema }.value(node, value, "$").is_ok()
}

struct Validator<'a> {
    schema: &'a ParsedSchema,
}

fn fail<T>(path: &str, expected: impl Into<String>) -> Result<T, PayloadError> {
    Err(PayloadError {
        path: path.to_owned(),
        expected: expected.into(),
    })
}

impl Validator<'_> {
    fn value(&self, node: &Schema, value: &Value, path: &str) -> Result<Value, PayloadError> {
        let node = self.schema.deref(node);
        if let Schema::Uuid = node {
            return match value.as_str().map(uuid::Uuid::parse_str) {
                Some(Ok(_)) => Ok(value.clone()),
                _ => fail(path, "a UUID string"),
            };
        }
        let kind = primitive(node);
        if kind != Primitive::Complex {
            return scalar(kind, value, path);
        }
        match node {
            Schema::Decimal(d) => self.value(&d.inner, value, path),
            Schema::Enum(e) => match value.as_str() {
                Some(s) if e.symbols.iter().any(|sym| sym == s) => Ok(value.clone()),
                _ => fail(path, format!("one of {}", e.symbols.join(", "))),
            },
            Schema::Fixed(f) => match value.as_str() {
                Some(s) if s.chars().count() == f.size => Ok(value.clone()),
                _ => fail(
                    path,
                    format!(
                        "a string of {} characters (fixed {})",
                        f.size,
                        full_name(&f.name)
                    ),
                ),
            },
            Schema::Duration => match value.as_str() {
                Some(s) if s.chars().count() == 12 => Ok(value.clone()),
                _ => fail(path, "a string of 12 characters (duration)"),
            },
            Schema::Array(a) => {
                let Some(items) = value.as_array() else {
                    return fail(path, "an array");
                };
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.value(&a.items, item, &format!("{path}[{i}]")))
                    .collect::<Result<Vec<_>, _>>()
                    .map(Value::Array)
            }
            Schema::Map(m) => {
                let Some(entries) = value.as_object() else {
                    return fail(path, "an object (map)");
                };
                let mut out = Map::with_capacity(entries.len());
                for (key, item) in entries {
                    out.insert(key.clone(), self.value(&m.types, item, &child(path, key))?);
                }
                Ok(Value::Object(out))
            }
            Schema::Record(r) => {
                let Some(given) = value.as_object() else {
                    return fail(path, format!("an object (record {})", full_name(&r.name)));
                };
                if let Some(unknown) = given.keys().find(|k| !r.lookup.contains_key(*k)) {
                    let fields: Vec<&str> = r.fields.iter().map(|f| f.name.as_str()).collect();
                    return fail(
                        &child(path, unknown),
                        format!("no such field; the record has {}", fields.join(", ")),
                    );
                }
                let mut out = Map::with_capacity(r.fields.len());
                for field in &r.fields {
                    let field_path = child(path, &field.name);
                    let v = match (given.get(&field.name), &field.default) {
                        (Some(v), _) => self.value(&field.schema, v, &field_path)?,
                        (None, Some(default)) => default.clone(),
                        (None, None) => {
                            return fail(
                                &field_path,
                                format!("required field {} (no default)", field.name),
                            )
                        }
                    };
                    out.insert(field.name.clone(), v);
                }
                Ok(Value::Object(out))
            }
            Schema::Union(u) => {
                let branches = u.variants();
                if let Some(found) = branches
                    .iter()
                    .find_map(|b| self.value(b, value, path).ok())
                {
                    return Ok(found);
                }
                // With one non-null branch, its own complaint is the precise one.
                let non_null: Vec<&Schema> = branches
                    .iter()
                    .filter(|b| !matches!(b, Schema::Null))
                    .collect();
                match non_null.as_slice() {
                    [only] if !value.is_null() => self.value(only, value, path),
                    _ => fail(
                        path,
                        format!(
                            "one of: {}",
                            branches
                                .iter()
                                .map(|b| kind_name(self.schema.deref(b)))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ),
                }
            }
            Schema::Ref { name } => fail(
                path,
                format!("a value of the undefined type {}", full_name(name)),
            ),
            other => fail(
                path,
                format!("a value of type {other:?}, which keel cannot take as JSON"),
            ),
        }
    }
}

/// Checks a value of a primitive (or primitive-based logical) type.
fn scalar(kind: Primitive, value: &Value, path: &str) -> Result<Value, PayloadError> {
    let int = value
        .as_i64()
        .filter(|n| i32::try_from(*n).is_ok())
        .is_some();
    let (fits, expected) = match kind {
        Primitive::Null => (value.is_null(), "null"),
        Primitive::Boolean => (value.is_boolean(), "a boolean"),
        Primitive::Int => (int, "an integer between -2147483648 and 2147483647 (int)"),
        Primitive::Long => (value.is_i64(), "an integer (long)"),
        Primitive::Float | Primitive::Double => (value.is_number(), "a number"),
        Primitive::Bytes | Primitive::String => (value.is_string(), "a string"),
        Primitive::Complex => (false, "a primitive value"),
    };
    if fits {
        Ok(value.clone())
    } else {
        fail(path, expected)
    }
}

fn child(path: &str, key: &str) -> String {
    let plain = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if plain {
        format!("{path}.{key}")
    } else {
        format!("{path}[{}]", Value::String(key.to_owned()))
    }
}

fn kind_name(schema: &Schema) -> String {
    match schema {
        Schema::Record(r) => format!("record {}", full_name(&r.name)),
        Schema::Enum(e) => format!("enum {}", full_name(&e.name)),
        Schema::Fixed(f) => format!("fixed {}", full_name(&f.name)),
        other => format!("{:?}", apache_avro::schema::SchemaKind::from(other)).to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn invoked() -> ParsedSchema {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/schemas/l12.service_invoked/v1.avsc"
        ))
        .unwrap();
        ParsedSchema::parse(&text).unwrap()
    }

    #[test]
    fn a_valid_payload_passes_and_defaults_are_filled_in() {
        let schema = ParsedSchema::parse(
            r#"{"type":"record","name":"r","fields":[
                {"name":"a","type":"int"},
                {"name":"b","type":["null","string"],"default":null},
                {"name":"tags","type":{"type":"map","values":"string"},"default":{}},
                {"name":"items","type":{"type":"array","items":{"type":"record","name":"item","fields":[{"name":"n","type":"long"}]}}}
            ]}"#,
        )
        .unwrap();
        let out = validate(&schema, &json!({"a": 1, "items": [{"n": 5}]})).unwrap();
        assert_eq!(
            out,
            json!({"a": 1, "b": null, "tags": {}, "items": [{"n": 5}]})
        );
        assert_eq!(
            validate(&schema, &json!({"a": 1, "b": "x", "items": []})).unwrap()["b"],
            "x"
        );
    }

    #[test]
    fn each_kind_of_mistake_is_reported_with_its_path() {
        let schema = invoked();
        let ok = json!({"service_name": "s", "method": "m", "execution_time": 1.5, "status": "OK"});
        assert!(validate(&schema, &ok).is_ok());
        let cases = [
            (json!([]), "$", "an object (record l12.service_invoked)"),
            (
                json!({"service_name": "s", "method": "m", "execution_time": 1}),
                "$.status",
                "required field status (no default)",
            ),
            (
                json!({"service_name": "s", "method": "m", "execution_time": "fast", "status": "OK"}),
                "$.execution_time",
                "a number",
            ),
            (
                json!({"service_name": "s", "method": "m", "execution_time": 1, "status": "MAYBE"}),
                "$.status",
                "one of OK, ERROR, TIMEOUT",
            ),
            (
                json!({"service_name": 7, "method": "m", "execution_time": 1, "status": "OK"}),
                "$.service_name",
                "a string",
            ),
        ];
        for (payload, path, expected) in cases {
            let err = validate(&schema, &payload).unwrap_err();
            assert_eq!(
                (err.path.as_str(), err.expected.as_str()),
                (path, expected),
                "{payload}"
            );
        }
        let err = validate(&schema, &json!({"service_name": "s", "method": "m", "execution_time": 1, "status": "OK", "extra": 1})).unwrap_err();
        assert_eq!(err.path, "$.extra");
        assert!(
            err.expected.starts_with("no such field"),
            "{}",
            err.expected
        );
    }

    #[test]
    fn numbers_must_fit_their_avro_type() {
        let schema = ParsedSchema::parse(r#"{"type":"record","name":"r","fields":[{"name":"i","type":"int"},{"name":"l","type":"long"}]}"#).unwrap();
        assert!(validate(
            &schema,
            &json!({"i": 2147483647, "l": 9007199254740993_i64})
        )
        .is_ok());
        assert_eq!(
            validate(&schema, &json!({"i": 2147483648_i64, "l": 1}))
                .unwrap_err()
                .path,
            "$.i"
        );
        assert_eq!(
            validate(&schema, &json!({"i": 1.5, "l": 1}))
                .unwrap_err()
                .path,
            "$.i"
        );
        assert_eq!(
            validate(&schema, &json!({"i": 1, "l": 1.0}))
                .unwrap_err()
                .path,
            "$.l"
        );
    }

    #[test]
    fn nested_union_and_map_paths_point_at_the_value() {
        let schema = ParsedSchema::parse(
            r#"{"type":"record","name":"r","fields":[
                {"name":"agent_id","type":{"type":"string","logicalType":"uuid"}},
                {"name":"inner","type":["null",{"type":"record","name":"in","fields":[{"name":"x","type":"int"}]}]},
                {"name":"m","type":{"type":"map","values":"int"}}
            ]}"#,
        )
        .unwrap();
        let base = json!({"agent_id": "3f6c1f0e-8a4b-4f7e-9a51-0c2d6c1f9b10", "inner": {"x": 1}, "m": {"a b": 1}});
        assert!(validate(&schema, &base).is_ok());
        let mut bad = base.clone();
        bad["inner"]["x"] = json!("one");
        assert_eq!(validate(&schema, &bad).unwrap_err().path, "$.inner.x");
        let mut bad = base.clone();
        bad["m"]["a b"] = json!("one");
        assert_eq!(validate(&schema, &bad).unwrap_err().path, r#"$.m["a b"]"#);
        let mut bad = base;
        bad["agent_id"] = json!("agent-7");
        assert_eq!(
            validate(&schema, &bad).unwrap_err().expected,
            "a UUID string"
        );
    }
}
