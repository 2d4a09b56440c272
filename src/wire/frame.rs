//! The Confluent wire format: magic byte 0, the schema id (4 bytes, big-endian), then the Avro
//! binary encoding of the payload with that schema.

use apache_avro::types::Value as AvroValue;
use serde_json::Value;

use super::{datum, Error};
use crate::schema::ParsedSchema;

/// Encodes `payload` (JSON, already valid for the schema) as a framed Avro datum: straight from
/// the JSON ([`super::datum`]), or through the Avro library for what that leaves alone.
pub fn encode(schema_id: i32, schema: &ParsedSchema, payload: &Value) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(64);
    out.push(0);
    out.extend_from_slice(&schema_id.to_be_bytes());
    if datum::write(schema, payload, &mut out).is_ok() {
        return Ok(out);
    }
    library_encode(schema_id, schema, payload)
}

fn library_encode(
    schema_id: i32,
    schema: &ParsedSchema,
    payload: &Value,
) -> Result<Vec<u8>, Error> {
    let failed = |e: apache_avro::Error| Error::Encode {
        id: schema_id,
        reason: e.to_string(),
    };
    let value = AvroValue::from(payload.clone())
        .resolve(schema.schema())
        .map_err(failed)?;
    let datum = apache_avro::to_avro_datum(schema.schema(), value).map_err(failed)?;
    let mut out = Vec::with_capacity(5 + datum.len());
    out.push(0);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(&datum);
    Ok(out)
}

/// The writer's schema id and the Avro datum of a framed value.
pub fn split(value: &[u8]) -> Result<(i32, &[u8]), Error> {
    match value {
        [0, a, b, c, d, datum @ ..] => Ok((i32::from_be_bytes([*a, *b, *c, *d]), datum)),
        _ => Err(Error::Framing),
    }
}

/// Decodes an Avro datum written with `schema` (the one `schema_id` names) into JSON: straight
/// from the bytes ([`super::datum`]), or through the Avro library for what that leaves alone (and
/// for a datum it cannot read, so that the error is the library's precise one).
pub fn decode(schema_id: i32, schema: &ParsedSchema, datum: &[u8]) -> Result<Value, Error> {
    let mut rest = datum;
    match datum::read(schema, &mut rest) {
        Ok(value) => Ok(value),
        Err(_) => library_decode(schema_id, schema, datum),
    }
}

fn library_decode(schema_id: i32, schema: &ParsedSchema, mut datum: &[u8]) -> Result<Value, Error> {
    let failed = |reason: String| Error::Avro {
        id: schema_id,
        reason,
    };
    let value = apache_avro::from_avro_datum(schema.schema(), &mut datum, None)
        .map_err(|e| failed(e.to_string()))?;
    Value::try_from(value).map_err(|e| failed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> ParsedSchema {
        ParsedSchema::parse(
            r#"{"type":"record","name":"t.e","fields":[
                {"name":"status","type":"string"},
                {"name":"note","type":["null","string"],"default":null},
                {"name":"count","type":"long"}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn the_value_is_confluent_framed_avro_that_decodes_with_the_schema() {
        let s = schema();
        let bytes = encode(42, &s, &json!({"status": "ok", "note": null, "count": 7})).unwrap();
        assert_eq!(bytes[0], 0);
        let (id, datum) = split(&bytes).unwrap();
        assert_eq!(id, 42);
        let decoded = apache_avro::from_avro_datum(s.schema(), &mut &datum[..], None).unwrap();
        assert_eq!(
            decoded,
            AvroValue::Record(vec![
                ("status".into(), AvroValue::String("ok".into())),
                (
                    "note".into(),
                    AvroValue::Union(0, Box::new(AvroValue::Null))
                ),
                ("count".into(), AvroValue::Long(7)),
            ])
        );
        assert_eq!(
            decode(id, &s, datum).unwrap(),
            json!({"status": "ok", "note": null, "count": 7})
        );
    }

    #[test]
    fn a_payload_that_does_not_fit_is_an_error_not_a_panic() {
        let err = encode(1, &schema(), &json!({"status": 5})).unwrap_err();
        assert!(matches!(err, Error::Encode { id: 1, .. }), "{err}");
    }

    #[test]
    fn a_value_without_the_frame_is_refused() {
        for value in [&b""[..], b"\x01\x00\x00\x00\x01abc", b"\x00\x00"] {
            assert_eq!(split(value), Err(Error::Framing));
        }
    }

    #[test]
    fn a_truncated_datum_is_an_error_naming_the_schema() {
        let s = schema();
        let bytes = encode(9, &s, &json!({"status": "ok", "note": "n", "count": 7})).unwrap();
        let err = decode(9, &s, &bytes[5..7]).unwrap_err();
        assert!(matches!(err, Error::Avro { id: 9, .. }), "{err}");
    }
}
