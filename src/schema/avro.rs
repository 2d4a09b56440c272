//! A parsed Avro schema with what keel needs around it: named-type lookup, the Parsing Canonical
//! Form and its fingerprint, and the identity used to recognise a schema registered twice.

use std::collections::HashMap;

use apache_avro::rabin::Rabin;
use apache_avro::schema::{Name, RecordField, RecordSchema, ResolvedSchema};
use apache_avro::Schema;

/// Why a schema text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid Avro schema: {0}")]
pub struct InvalidSchema(pub String);

/// A schema, parsed and checked once, then shared.
#[derive(Debug, Clone)]
pub struct ParsedSchema {
    schema: Schema,
    /// Every named type (record, enum, fixed) by full name, for resolving references.
    names: HashMap<String, Schema>,
    canonical: String,
    fingerprint: i64,
    identity: String,
}

impl ParsedSchema {
    /// Parses schema text that arrives from outside (a registration, a lookup, a check, the
    /// catalog), within the shape limits of [`super::limits`].
    pub fn parse(text: &str) -> Result<Self, InvalidSchema> {
        let json = Self::json(text)?;
        super::limits::check(&json)?;
        Self::from_json(json)
    }

    /// Parses schema text the registry already stored. The shape limits are not applied: a schema
    /// registered before they existed must still decode and upcast the events written with it.
    pub fn parse_stored(text: &str) -> Result<Self, InvalidSchema> {
        Self::from_json(Self::json(text)?)
    }

    fn json(text: &str) -> Result<serde_json::Value, InvalidSchema> {
        serde_json::from_str(text).map_err(|e| InvalidSchema(format!("not JSON: {e}")))
    }

    fn from_json(json: serde_json::Value) -> Result<Self, InvalidSchema> {
        refuse_fixed_uuid(&json)?;
        let schema = Schema::parse(&json).map_err(|e| InvalidSchema(e.to_string()))?;
        let names = ResolvedSchema::try_from(&schema)
            .map_err(|e| InvalidSchema(e.to_string()))?
            .get_names()
            .iter()
            .map(|(name, schema)| (full_name(name), (*schema).clone()))
            .collect();
        let canonical = schema.canonical_form();
        let fingerprint = schema.fingerprint::<Rabin>().bytes;
        let fingerprint = i64::from_le_bytes(
            fingerprint
                .try_into()
                .map_err(|_| InvalidSchema("fingerprint is not 8 bytes".into()))?,
        );
        // serde_json's default map is ordered, so re-serialising normalises key order and
        // whitespace while keeping defaults, aliases and docs, which the canonical form drops
        // although defaults and aliases change how data resolves.
        let identity = json.to_string();
        Ok(Self {
            schema,
            names,
            canonical,
            fingerprint,
            identity,
        })
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// Avro's Parsing Canonical Form.
    pub fn canonical_form(&self) -> &str {
        &self.canonical
    }

    /// The CRC-64-AVRO (Rabin) fingerprint of the canonical form, as Avro's single-object
    /// encoding uses it.
    pub fn fingerprint(&self) -> i64 {
        self.fingerprint
    }

    /// The normalised full schema: two registrations are the same schema when these are equal.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Follows a reference to a named type; any other schema is returned as it is.
    pub fn deref<'a>(&'a self, schema: &'a Schema) -> &'a Schema {
        match schema {
            Schema::Ref { name } => self.names.get(&full_name(name)).unwrap_or(schema),
            other => other,
        }
    }

    /// The record's full name, if the schema is a record.
    pub fn record_name(&self) -> Option<String> {
        match &self.schema {
            Schema::Record(r) => Some(full_name(&r.name)),
            _ => None,
        }
    }
}

/// The Avro library reads a fixed-based uuid as a string uuid, which would make a `string` field
/// "compatible" with a `fixed(16)` one; such schemas are refused rather than misread.
fn refuse_fixed_uuid(json: &serde_json::Value) -> Result<(), InvalidSchema> {
    match json {
        serde_json::Value::Object(map) => {
            if map.get("type").and_then(|t| t.as_str()) == Some("fixed")
                && map.get("logicalType").and_then(|t| t.as_str()) == Some("uuid")
            {
                return Err(InvalidSchema(
                    "a fixed-based uuid is not supported; use {\"type\": \"string\", \"logicalType\": \"uuid\"}".into(),
                ));
            }
            map.values().try_for_each(refuse_fixed_uuid)
        }
        serde_json::Value::Array(items) => items.iter().try_for_each(refuse_fixed_uuid),
        _ => Ok(()),
    }
}

pub fn full_name(name: &Name) -> String {
    name.fullname(None)
}

/// The primitive a schema is encoded as: logical types resolve as their underlying type, and
/// everything named or nested is `Complex`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Primitive {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Complex,
}

pub(crate) fn primitive(schema: &Schema) -> Primitive {
    match schema {
        Schema::Null => Primitive::Null,
        Schema::Boolean => Primitive::Boolean,
        Schema::Int | Schema::Date | Schema::TimeMillis => Primitive::Int,
        Schema::Long
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => Primitive::Long,
        Schema::Float => Primitive::Float,
        Schema::Double => Primitive::Double,
        Schema::Bytes | Schema::BigDecimal => Primitive::Bytes,
        Schema::String | Schema::Uuid => Primitive::String,
        Schema::Decimal(d) => primitive(&d.inner),
        _ => Primitive::Complex,
    }
}

/// The writer's field that a reader's field reads: the one with its name, else one named by its
/// aliases.
pub(crate) fn writer_field<'a>(
    writer: &'a RecordSchema,
    reader_field: &RecordField,
) -> Option<&'a RecordField> {
    std::iter::once(&reader_field.name)
        .chain(reader_field.aliases.iter().flatten())
        .find_map(|name| field_named(writer, name))
}

/// The record's field called `name`, through the parser's lookup table so that wide records are
/// not searched field by field. The table also holds the fields' aliases, and an alias can take
/// the place of another field's name there; such a clash falls back to the search.
fn field_named<'a>(record: &'a RecordSchema, name: &str) -> Option<&'a RecordField> {
    let position = *record.lookup.get(name)?;
    match record.fields.get(position) {
        Some(field) if field.name == name => Some(field),
        _ => record.fields.iter().find(|f| f.name == name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape limits guard what arrives, not what is stored: a schema registered before them
    /// (here an enum one symbol over the cap) still parses from the registry's table.
    #[test]
    fn stored_schemas_parse_past_the_shape_limits_that_new_text_must_meet() {
        let symbols: Vec<String> = (0..=super::super::limits::MAX_ENUM_SYMBOLS)
            .map(|i| format!("S{i}"))
            .collect();
        let text =
            serde_json::json!({"type": "enum", "name": "t.big", "symbols": symbols}).to_string();
        assert!(
            ParsedSchema::parse(&text).is_err(),
            "new text over the cap is refused"
        );
        let stored = ParsedSchema::parse_stored(&text).expect("stored text parses");
        assert!(
            matches!(stored.schema(), Schema::Enum(e) if e.symbols.len() == symbols.len()),
            "{:?}",
            stored.canonical_form().chars().take(80).collect::<String>()
        );
    }

    #[test]
    fn whitespace_and_key_order_do_not_change_identity_but_defaults_do() {
        let a = ParsedSchema::parse(
            r#"{"type":"record","name":"r","fields":[{"name":"x","type":"int","default":1}]}"#,
        )
        .unwrap();
        let b = ParsedSchema::parse(
            r#"{ "fields": [ {"default": 1, "type": "int", "name": "x"} ], "name": "r", "type": "record" }"#,
        )
        .unwrap();
        let c = ParsedSchema::parse(
            r#"{"type":"record","name":"r","fields":[{"name":"x","type":"int","default":2}]}"#,
        )
        .unwrap();
        assert_eq!(a.identity(), b.identity());
        assert_ne!(a.identity(), c.identity());
        assert_eq!(
            a.canonical_form(),
            c.canonical_form(),
            "the canonical form drops defaults"
        );
        assert_eq!(a.fingerprint(), c.fingerprint());
        assert_eq!(
            a.canonical_form(),
            r#"{"name":"r","type":"record","fields":[{"name":"x","type":"int"}]}"#
        );
    }

    #[test]
    fn fields_are_found_by_name_even_where_an_alias_clashes_with_a_name() {
        let parsed = ParsedSchema::parse(
            r#"{"type":"record","name":"r","fields":[{"name":"a","type":"int"},{"name":"b","type":"long","aliases":["a"]}]}"#,
        )
        .unwrap();
        let Schema::Record(record) = parsed.schema() else {
            panic!("a record")
        };
        assert_eq!(field_named(record, "a").map(|f| f.position), Some(0));
        assert_eq!(field_named(record, "b").map(|f| f.position), Some(1));
        assert!(field_named(record, "c").is_none());
    }

    #[test]
    fn invalid_schemas_say_why() {
        for bad in [
            "{",
            r#"{"type":"recrod"}"#,
            r#"{"type":"record","name":"r","fields":[{"name":"x","type":"int","default":"a"}]}"#,
        ] {
            assert!(ParsedSchema::parse(bad).is_err(), "{bad}");
        }
    }
}
