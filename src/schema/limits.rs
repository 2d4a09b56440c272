//! Caps on a schema's shape, checked on its JSON before the Avro library parses it, so that
//! parsing, compatibility checks and payload validation (all recursive) stay bounded in stack and
//! time whatever a client registers.
//!
//! The JSON parser already stops at 128 levels of nesting; these caps are Avro's own and lower.
//! Depth counts schemas inside schemas: a record's field types, an array's items, a map's values
//! and a union's branches are one level below it.

use serde_json::Value;

use super::InvalidSchema;

/// Deepest nesting of schemas inside schemas.
pub const MAX_DEPTH: usize = 64;
/// Most branches in one union.
pub const MAX_UNION_BRANCHES: usize = 1_000;
/// Most symbols in one enum.
pub const MAX_ENUM_SYMBOLS: usize = 10_000;
/// Most fields in one record.
pub const MAX_RECORD_FIELDS: usize = 10_000;

/// Refuses a schema over a cap, saying which.
pub fn check(schema: &Value) -> Result<(), InvalidSchema> {
    check_at(schema, 0)
}

fn check_at(schema: &Value, depth: usize) -> Result<(), InvalidSchema> {
    if depth > MAX_DEPTH {
        return Err(InvalidSchema(format!(
            "the schema nests deeper than {MAX_DEPTH} levels"
        )));
    }
    match schema {
        Value::Array(branches) => {
            over("a union", "branches", branches.len(), MAX_UNION_BRANCHES)?;
            branches.iter().try_for_each(|b| check_at(b, depth + 1))
        }
        Value::Object(map) => {
            let kind = map.get("type");
            if let Some(Value::Array(symbols)) = map.get("symbols") {
                over("an enum", "symbols", symbols.len(), MAX_ENUM_SYMBOLS)?;
            }
            if let Some(Value::Array(fields)) = map.get("fields") {
                over("a record", "fields", fields.len(), MAX_RECORD_FIELDS)?;
                for field in fields {
                    if let Some(t) = field.get("type") {
                        check_at(t, depth + 1)?;
                    }
                }
            }
            for nested in [map.get("items"), map.get("values")].into_iter().flatten() {
                check_at(nested, depth + 1)?;
            }
            // `{"type": {...}}` and `{"type": [...]}` wrap a schema in a schema.
            match kind {
                Some(inner @ (Value::Object(_) | Value::Array(_))) => check_at(inner, depth + 1),
                _ => Ok(()),
            }
        }
        _ => Ok(()),
    }
}

fn over(what: &str, of: &str, n: usize, max: usize) -> Result<(), InvalidSchema> {
    if n > max {
        return Err(InvalidSchema(format!(
            "{what} has {n} {of}; at most {max} are allowed"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::schema::ParsedSchema;

    fn nested_arrays(levels: usize) -> Value {
        (0..levels).fold(
            json!("int"),
            |inner, _| json!({"type": "array", "items": inner}),
        )
    }

    fn nested_records(levels: usize) -> Value {
        (0..levels).fold(json!("int"), |inner, i| {
            json!({"type": "record", "name": format!("r{i}"), "fields": [{"name": "x", "type": inner}]})
        })
    }

    #[test]
    fn schemas_at_the_depth_cap_pass_and_one_deeper_are_refused() {
        assert!(check(&nested_arrays(MAX_DEPTH)).is_ok());
        let err = check(&nested_arrays(MAX_DEPTH + 1)).unwrap_err();
        assert!(err.0.contains("deeper than 64"), "{err}");
        assert!(check(&nested_records(MAX_DEPTH)).is_ok());
        assert!(check(&nested_records(MAX_DEPTH + 1)).is_err());
        // `{"type": {"type": ...}}`: the innermost `{"type": "int"}` is the schema at the bottom.
        let wrapped =
            |levels| (1..levels).fold(json!({"type": "int"}), |inner, _| json!({"type": inner}));
        assert!(check(&wrapped(MAX_DEPTH + 1)).is_ok());
        assert!(check(&wrapped(MAX_DEPTH + 2)).is_err());
    }

    #[test]
    fn wide_unions_enums_and_records_are_refused_with_the_cap_named() {
        let union: Vec<Value> = (0..=MAX_UNION_BRANCHES)
            .map(|i| json!({"type": "fixed", "name": format!("f{i}"), "size": 1}))
            .collect();
        let err = check(&Value::Array(union)).unwrap_err();
        assert!(err.0.contains("1001 branches"), "{err}");
        let symbols: Vec<String> = (0..=MAX_ENUM_SYMBOLS).map(|i| format!("S{i}")).collect();
        let err = check(&json!({"type": "enum", "name": "e", "symbols": symbols})).unwrap_err();
        assert!(err.0.contains("10001 symbols"), "{err}");
        let fields: Vec<Value> = (0..=MAX_RECORD_FIELDS)
            .map(|i| json!({"name": format!("f{i}"), "type": "int"}))
            .collect();
        let err = check(&json!({"type": "record", "name": "r", "fields": fields})).unwrap_err();
        assert!(err.0.contains("10001 fields"), "{err}");
        // A union deep inside a record is found too.
        let deep = json!({"type": "record", "name": "r", "fields": [{"name": "u", "type": {"type": "array", "items": (0..=MAX_UNION_BRANCHES).map(|i| json!({"type": "fixed", "name": format!("g{i}"), "size": 1})).collect::<Vec<_>>()}}]});
        assert!(check(&deep).is_err());
    }

    #[test]
    fn parsing_applies_the_caps_and_real_schemas_still_parse() {
        let text = nested_arrays(MAX_DEPTH + 1).to_string();
        let err = ParsedSchema::parse(&text).unwrap_err();
        assert!(err.to_string().contains("deeper than"), "{err}");
        let recursive = r#"{"type":"record","name":"LongList","fields":[{"name":"value","type":"long"},{"name":"next","type":["null","LongList"]}]}"#;
        assert!(ParsedSchema::parse(recursive).is_ok());
    }
}
