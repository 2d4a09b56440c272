//! How the dashboard writes values: times in UTC (with the relative time filled in by the
//! script), durations and counts for people, payloads in full or masked, query strings.

use std::fmt;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::config::Payloads;

/// A time as the dashboard shows it: `2026-12-01 15:04:05 UTC`, in a `<time>` element whose
/// `datetime` the script turns into "3 min ago" beside it.
pub struct Time(pub DateTime<Utc>);

impl Time {
    pub fn iso(&self) -> String {
        self.0.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }

    pub fn utc(&self) -> String {
        self.0.format("%Y-%m-%d %H:%M:%S UTC").to_string()
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.utc())
    }
}

/// Seconds as `850 ms`, `12.3 s`, `4 min 5 s`, `2 h 3 min`.
pub fn duration(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "–".into();
    }
    if seconds < 1.0 {
        return format!("{:.0} ms", seconds * 1000.0);
    }
    if seconds < 60.0 {
        return format!("{seconds:.1} s");
    }
    let s = seconds.round() as u64;
    if s < 3600 {
        return format!("{} min {} s", s / 60, s % 60);
    }
    format!("{} h {} min", s / 3600, (s % 3600) / 60)
}

/// A count with thousands separated: `12,345`.
pub fn count(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        out.insert(0, '-');
    }
    out
}

/// A rate per second: `0`, `3.5`, `1,204`.
pub fn rate(per_s: f64) -> String {
    if per_s < 10.0 {
        let text = format!("{per_s:.1}");
        return text.strip_suffix(".0").map(str::to_owned).unwrap_or(text);
    }
    count(per_s.round() as i64)
}

/// A payload as indented JSON, or with every value replaced by its type under `masked`.
pub fn payload(value: &Value, mode: Payloads) -> String {
    let shown = match mode {
        Payloads::Full => value.clone(),
        Payloads::Masked => mask(value),
    };
    serde_json::to_string_pretty(&shown).unwrap_or_default()
}

/// The value's structure with its data gone: each leaf becomes its type's name.
pub fn mask(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), mask(v))).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(mask).collect()),
        Value::String(_) => Value::String("‹string›".into()),
        Value::Number(_) => Value::String("‹number›".into()),
        Value::Bool(_) => Value::String("‹boolean›".into()),
        Value::Null => Value::Null,
    }
}

/// Percent-encodes a query value (RFC 3986 unreserved characters stay).
pub fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `?a=1&b=2` from the pairs whose value is not empty.
pub fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| {
            v.filter(|v| !v.is_empty())
                .map(|v| format!("{k}={}", url_encode(v)))
        })
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn counts_and_durations_read_as_people_write_them() {
        assert_eq!(count(0), "0");
        assert_eq!(count(1234567), "1,234,567");
        assert_eq!(count(-1000), "-1,000");
        assert_eq!(duration(0.25), "250 ms");
        assert_eq!(duration(12.34), "12.3 s");
        assert_eq!(duration(245.0), "4 min 5 s");
        assert_eq!(duration(7380.0), "2 h 3 min");
        assert_eq!(rate(3.0), "3");
        assert_eq!(rate(2.55), "2.5");
        assert_eq!(rate(1204.4), "1,204");
    }

    #[test]
    fn a_masked_payload_keeps_its_shape_and_loses_its_data() {
        let p = json!({"name": "Ada", "age": 36, "tags": ["x"], "ok": true, "none": null});
        let masked = mask(&p);
        assert_eq!(
            masked,
            json!({"name": "‹string›", "age": "‹number›", "tags": ["‹string›"], "ok": "‹boolean›", "none": null})
        );
        assert!(!payload(&p, Payloads::Masked).contains("Ada"));
        assert!(payload(&p, Payloads::Full).contains("Ada"));
    }

    #[test]
    fn query_strings_leave_out_empty_values_and_encode_the_rest() {
        assert_eq!(query(&[("a", None), ("b", Some(""))]), "");
        assert_eq!(
            query(&[
                ("event_type", Some("a.b")),
                ("to", Some("2026-01-01T00:00:00+01:00"))
            ]),
            "?event_type=a.b&to=2026-01-01T00%3A00%3A00%2B01%3A00"
        );
    }
}
