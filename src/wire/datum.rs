//! The Avro binary encoding of keel's JSON payloads, written and read by walking the schema: no
//! Avro value tree in between and nothing resolved per call. It is the relay's and the readers'
//! fast path; [`super::frame`] falls back to the Avro library for what this module leaves alone.
//!
//! A payload here is what keel stores: JSON already normalised to its schema by
//! [`crate::schema::validate`] (every field present, defaults filled in). A union takes the first
//! branch the value fits, keel's rule for bare JSON union values. Anything this module does not
//! take on (bytes, fixed, decimal, duration, a field left out, a value that does not fit) is
//! [`Unhandled`], never a guess: the library's path then gives the same bytes, or the precise
//! error, as before this module existed.

use apache_avro::Schema;
use serde_json::{Map, Number, Value};

use crate::schema::avro::{primitive, Primitive};
use crate::schema::ParsedSchema;

/// This module does not encode or decode the value; use the library's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unhandled;

/// Appends the Avro binary encoding of `value` (written with `schema`) to `out`. On `Unhandled`,
/// `out` may hold a partial datum; the caller truncates it.
pub fn write(schema: &ParsedSchema, value: &Value, out: &mut Vec<u8>) -> Result<(), Unhandled> {
    Writer { schema }.value(schema.schema(), value, out)
}

/// Reads one datum written with `schema` from the front of `datum` as JSON, the way the library's
/// value tree turns into JSON (enum symbols and uuids as strings, timestamps as numbers).
pub fn read(schema: &ParsedSchema, datum: &mut &[u8]) -> Result<Value, Unhandled> {
    Reader { schema }.value(schema.schema(), datum)
}

struct Writer<'a> {
    schema: &'a ParsedSchema,
}

impl Writer<'_> {
    fn value(&self, node: &Schema, value: &Value, out: &mut Vec<u8>) -> Result<(), Unhandled> {
        let node = self.schema.deref(node);
        match node {
            Schema::Null => value.is_null().then_some(()).ok_or(Unhandled),
            Schema::Boolean => {
                out.push(u8::from(value.as_bool().ok_or(Unhandled)?));
                Ok(())
            }
            Schema::Uuid => {
                // The library writes a uuid in its hyphenated lower-case form, whatever the
                // spelling given.
                let text = value.as_str().ok_or(Unhandled)?;
                let id = uuid::Uuid::parse_str(text).map_err(|_| Unhandled)?;
                let mut buf = uuid::Uuid::encode_buffer();
                write_bytes(id.hyphenated().encode_lower(&mut buf).as_bytes(), out);
                Ok(())
            }
            Schema::String => {
                write_bytes(value.as_str().ok_or(Unhandled)?.as_bytes(), out);
                Ok(())
            }
            Schema::Enum(e) => {
                let symbol = value.as_str().ok_or(Unhandled)?;
                let index = e
                    .symbols
                    .iter()
                    .position(|s| s == symbol)
                    .ok_or(Unhandled)?;
                write_long(index as i64, out);
                Ok(())
            }
            Schema::Array(a) => {
                let items = value.as_array().ok_or(Unhandled)?;
                if !items.is_empty() {
                    write_long(items.len() as i64, out);
                    for item in items {
                        self.value(&a.items, item, out)?;
                    }
                }
                out.push(0);
                Ok(())
            }
            Schema::Map(m) => {
                let entries = value.as_object().ok_or(Unhandled)?;
                if !entries.is_empty() {
                    write_long(entries.len() as i64, out);
                    for (key, item) in entries {
                        write_bytes(key.as_bytes(), out);
                        self.value(&m.types, item, out)?;
                    }
                }
                out.push(0);
                Ok(())
            }
            Schema::Record(r) => {
                let given = value.as_object().ok_or(Unhandled)?;
                for field in &r.fields {
                    self.value(&field.schema, given.get(&field.name).ok_or(Unhandled)?, out)?;
                }
                Ok(())
            }
            Schema::Union(u) => {
                let (index, branch) = u
                    .variants()
                    .iter()
                    .enumerate()
                    .find(|(_, b)| self.fits(b, value))
                    .ok_or(Unhandled)?;
                write_long(index as i64, out);
                self.value(branch, value, out)
            }
            other => match primitive(other) {
                Primitive::Int => {
                    let n = value.as_i64().ok_or(Unhandled)?;
                    write_long(i32::try_from(n).map_err(|_| Unhandled)?.into(), out);
                    Ok(())
                }
                Primitive::Long => {
                    write_long(value.as_i64().ok_or(Unhandled)?, out);
                    Ok(())
                }
                Primitive::Float if matches!(other, Schema::Float) => {
                    let x = value.as_f64().ok_or(Unhandled)? as f32;
                    out.extend_from_slice(&x.to_le_bytes());
                    Ok(())
                }
                Primitive::Double if matches!(other, Schema::Double) => {
                    out.extend_from_slice(&value.as_f64().ok_or(Unhandled)?.to_le_bytes());
                    Ok(())
                }
                // Bytes, fixed, decimals, durations: rare in event payloads, left to the library.
                _ => Err(Unhandled),
            },
        }
    }

    /// Whether `value` takes union branch `branch`: the validator's "first branch it fits",
    /// answered without copying the value for the branches events use.
    fn fits(&self, branch: &Schema, value: &Value) -> bool {
        let branch = self.schema.deref(branch);
        match branch {
            Schema::Null => value.is_null(),
            Schema::Boolean => value.is_boolean(),
            Schema::String => value.is_string(),
            Schema::Uuid => value
                .as_str()
                .is_some_and(|s| uuid::Uuid::parse_str(s).is_ok()),
            Schema::Enum(e) => value
                .as_str()
                .is_some_and(|s| e.symbols.iter().any(|sym| sym == s)),
            Schema::Int | Schema::Date | Schema::TimeMillis => {
                value.as_i64().is_some_and(|n| i32::try_from(n).is_ok())
            }
            Schema::Float | Schema::Double => value.is_number(),
            other if primitive(other) == Primitive::Long => value.is_i64(),
            other => crate::schema::json::fits(self.schema, other, value),
        }
    }
}

struct Reader<'a> {
    schema: &'a ParsedSchema,
}

impl Reader<'_> {
    fn value(&self, node: &Schema, datum: &mut &[u8]) -> Result<Value, Unhandled> {
        let node = self.schema.deref(node);
        Ok(match node {
            Schema::Null => Value::Null,
            Schema::Boolean => match take(datum, 1)? {
                [0] => Value::Bool(false),
                [1] => Value::Bool(true),
                _ => return Err(Unhandled),
            },
            Schema::String => Value::String(read_string(datum)?.to_owned()),
            Schema::Uuid => {
                let id = uuid::Uuid::parse_str(read_string(datum)?).map_err(|_| Unhandled)?;
                Value::String(id.hyphenated().to_string())
            }
            Schema::Enum(e) => {
                let index = usize::try_from(read_long(datum)?).map_err(|_| Unhandled)?;
                Value::String(e.symbols.get(index).ok_or(Unhandled)?.clone())
            }
            Schema::Array(a) => {
                let mut items = Vec::new();
                while let Some(n) = read_block(datum)? {
                    items.reserve(n.min(datum.len()));
                    for _ in 0..n {
                        items.push(self.value(&a.items, datum)?);
                    }
                }
                Value::Array(items)
            }
            Schema::Map(m) => {
                let mut entries = Map::new();
                while let Some(n) = read_block(datum)? {
                    for _ in 0..n {
                        let key = read_string(datum)?.to_owned();
                        entries.insert(key, self.value(&m.types, datum)?);
                    }
                }
                Value::Object(entries)
            }
            Schema::Record(r) => {
                let mut fields = Map::new();
                for field in &r.fields {
                    fields.insert(field.name.clone(), self.value(&field.schema, datum)?);
                }
                Value::Object(fields)
            }
            Schema::Union(u) => {
                let index = usize::try_from(read_long(datum)?).map_err(|_| Unhandled)?;
                self.value(u.variants().get(index).ok_or(Unhandled)?, datum)?
            }
            other => match primitive(other) {
                Primitive::Int => {
                    let n = i32::try_from(read_long(datum)?).map_err(|_| Unhandled)?;
                    Value::Number(n.into())
                }
                Primitive::Long => Value::Number(read_long(datum)?.into()),
                Primitive::Float if matches!(other, Schema::Float) => {
                    let b = take(datum, 4)?;
                    let x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    Value::Number(Number::from_f64(x.into()).ok_or(Unhandled)?)
                }
                Primitive::Double if matches!(other, Schema::Double) => {
                    let b: [u8; 8] = take(datum, 8)?.try_into().map_err(|_| Unhandled)?;
                    Value::Number(Number::from_f64(f64::from_le_bytes(b)).ok_or(Unhandled)?)
                }
                _ => return Err(Unhandled),
            },
        })
    }
}

/// Avro's `long`: zig-zag, then a little-endian base-128 varint.
fn write_long(n: i64, out: &mut Vec<u8>) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn write_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    write_long(bytes.len() as i64, out);
    out.extend_from_slice(bytes);
}

fn read_long(datum: &mut &[u8]) -> Result<i64, Unhandled> {
    let mut z: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = datum.split_first().ok_or(Unhandled)?;
        *datum = rest;
        z |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok((z >> 1) as i64 ^ -((z & 1) as i64));
        }
    }
    Err(Unhandled)
}

fn take<'d>(datum: &mut &'d [u8], n: usize) -> Result<&'d [u8], Unhandled> {
    if datum.len() < n {
        return Err(Unhandled);
    }
    let (head, rest) = datum.split_at(n);
    *datum = rest;
    Ok(head)
}

fn read_string<'d>(datum: &mut &'d [u8]) -> Result<&'d str, Unhandled> {
    let n = usize::try_from(read_long(datum)?).map_err(|_| Unhandled)?;
    std::str::from_utf8(take(datum, n)?).map_err(|_| Unhandled)
}

/// The item count of the next block of an array or map, or `None` at the end marker. A negative
/// count is followed by the block's size in bytes, which is not needed here.
fn read_block(datum: &mut &[u8]) -> Result<Option<usize>, Unhandled> {
    match read_long(datum)? {
        0 => Ok(None),
        n if n < 0 => {
            read_long(datum)?;
            Ok(Some(n.unsigned_abs() as usize))
        }
        n => Ok(Some(n as usize)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::types::Value as AvroValue;
    use serde_json::json;

    fn library_encode(schema: &ParsedSchema, payload: &Value) -> Vec<u8> {
        let value = AvroValue::from(payload.clone())
            .resolve(schema.schema())
            .expect("the library resolves it");
        apache_avro::to_avro_datum(schema.schema(), value).expect("the library encodes it")
    }

    fn library_decode(schema: &ParsedSchema, mut datum: &[u8]) -> Value {
        let v = apache_avro::from_avro_datum(schema.schema(), &mut datum, None).unwrap();
        Value::try_from(v).unwrap()
    }

    fn fast_encode(schema: &ParsedSchema, payload: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        write(schema, payload, &mut out).expect("handled");
        out
    }

    const WIDE: &str = r#"{"type":"record","name":"t.wide","fields":[
        {"name":"s","type":"string"},
        {"name":"n","type":["null","string"],"default":null},
        {"name":"i","type":"int"},
        {"name":"l","type":"long"},
        {"name":"f","type":"float"},
        {"name":"d","type":"double"},
        {"name":"b","type":"boolean"},
        {"name":"u","type":{"type":"string","logicalType":"uuid"}},
        {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
        {"name":"day","type":{"type":"int","logicalType":"date"}},
        {"name":"e","type":{"type":"enum","name":"t.colour","symbols":["red","green","blue"]}},
        {"name":"tags","type":{"type":"array","items":"string"}},
        {"name":"attrs","type":{"type":"map","values":"long"}},
        {"name":"child","type":["null",{"type":"record","name":"t.child","fields":[
            {"name":"x","type":"long"},{"name":"colour","type":"t.colour"}]}],"default":null},
        {"name":"kids","type":{"type":"array","items":"t.child"}},
        {"name":"num","type":["null","long","double"]}]}"#;

    fn wide_payloads() -> Vec<Value> {
        vec![
            json!({"s": "héllo", "n": null, "i": -7, "l": 1_i64 << 40, "f": 1.1, "d": -2.5e100,
                   "b": true, "u": "6F9619FF-8B86-D011-B42D-00C04FC964FF", "ts": 1_700_000_000_000_i64,
                   "day": 19_000, "e": "green", "tags": ["a", "", "c"], "attrs": {"k": -1},
                   "child": {"x": 3, "colour": "blue"}, "kids": [], "num": 2.5}),
            json!({"s": "", "n": "x", "i": i32::MAX, "l": i64::MIN, "f": 0, "d": 3,
                   "b": false, "u": "6f9619ff8b86d011b42d00c04fc964ff", "ts": -1, "day": 0,
                   "e": "red", "tags": [], "attrs": {}, "child": null,
                   "kids": [{"x": i64::MAX, "colour": "red"}, {"x": 0, "colour": "green"}],
                   "num": 12}),
        ]
    }

    #[test]
    fn the_fast_path_writes_what_the_library_writes_and_reads_what_it_reads() {
        let schema = ParsedSchema::parse(WIDE).unwrap();
        for payload in wide_payloads() {
            let ours = fast_encode(&schema, &payload);
            // A map with one entry has one order; so these bytes are comparable one for one.
            assert_eq!(ours, library_encode(&schema, &payload), "{payload}");
            let mut datum = &ours[..];
            let back = read(&schema, &mut datum).expect("handled");
            assert!(datum.is_empty(), "the whole datum is read");
            assert_eq!(back, library_decode(&schema, &ours), "{payload}");
        }
    }

    #[test]
    fn a_union_takes_the_first_branch_the_value_fits() {
        let schema = ParsedSchema::parse(
            r#"{"type":"record","name":"t.u","fields":[{"name":"v","type":["null","int","long","string"]}]}"#,
        )
        .unwrap();
        assert_eq!(fast_encode(&schema, &json!({"v": null})), [0]);
        assert_eq!(fast_encode(&schema, &json!({"v": 5})), [2, 10]);
        assert_eq!(fast_encode(&schema, &json!({"v": 1_i64 << 33}))[0], 4);
        assert_eq!(fast_encode(&schema, &json!({"v": "a"})), [6, 2, b'a']);
    }

    #[test]
    fn what_the_fast_path_leaves_alone_is_said_not_guessed() {
        let bytes = ParsedSchema::parse(
            r#"{"type":"record","name":"t.b","fields":[{"name":"v","type":"bytes"}]}"#,
        )
        .unwrap();
        assert_eq!(
            write(&bytes, &json!({"v": "ab"}), &mut Vec::new()),
            Err(Unhandled)
        );
        let schema = ParsedSchema::parse(WIDE).unwrap();
        // A field left out (no normalisation), or a value that does not fit its schema.
        let mut missing = wide_payloads()[0].clone();
        missing.as_object_mut().unwrap().remove("i");
        assert_eq!(write(&schema, &missing, &mut Vec::new()), Err(Unhandled));
        let mut wrong = wide_payloads()[0].clone();
        wrong["e"] = json!("purple");
        assert_eq!(write(&schema, &wrong, &mut Vec::new()), Err(Unhandled));
    }

    #[test]
    fn a_truncated_or_corrupt_datum_is_refused_not_read_past() {
        let schema = ParsedSchema::parse(WIDE).unwrap();
        let whole = fast_encode(&schema, &wide_payloads()[1]);
        for cut in 0..whole.len() {
            assert_eq!(
                read(&schema, &mut &whole[..cut]),
                Err(Unhandled),
                "cut at {cut}"
            );
        }
        // A varint that never ends, and an enum index past the symbols.
        assert_eq!(read_long(&mut &[0xff_u8; 11][..]), Err(Unhandled));
        let e = ParsedSchema::parse(r#"{"type":"enum","name":"t.e","symbols":["a"]}"#).unwrap();
        assert_eq!(read(&e, &mut &[2_u8][..]), Err(Unhandled));
    }

    #[test]
    fn longs_round_trip_at_the_edges() {
        for n in [0, 1, -1, 63, -64, 64, i64::MAX, i64::MIN, 1 << 35] {
            let mut out = Vec::new();
            write_long(n, &mut out);
            let mut datum = &out[..];
            assert_eq!(read_long(&mut datum), Ok(n));
            assert!(datum.is_empty());
        }
    }
}
