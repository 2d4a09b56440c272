//! A Kafka record as keel's readers hold it: owned, copied out of librdkafka's buffer, so the
//! message can be released at once. The consumer runtime, the dead-letter store, `keel consume`
//! and the projection runner all read this one shape.

use std::collections::HashMap;

use crate::wire::header;

/// A record as the consumer received it, owned.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The key as text; `""` when the record had none. keel keys records by aggregate id.
    pub key: String,
    pub headers: HashMap<String, String>,
    pub value: Vec<u8>,
}

impl Record {
    /// Copies a record out of librdkafka's buffer. Headers that are not UTF-8 are left out (keel
    /// writes only UTF-8 ones); a missing key is `""`.
    pub fn from_message(m: &rdkafka::message::BorrowedMessage<'_>) -> Self {
        use rdkafka::message::{Headers, Message};
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .filter_map(|h| {
                        Some((h.key.to_owned(), String::from_utf8(h.value?.to_vec()).ok()?))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Record {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            key: m
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default(),
            headers,
            value: m.payload().unwrap_or_default().to_vec(),
        }
    }

    pub fn event_type(&self) -> Option<&str> {
        self.headers.get(header::EVENT_TYPE).map(String::as_str)
    }

    /// A keel header parsed, when present and well-formed.
    pub fn header<T: std::str::FromStr>(&self, name: &str) -> Option<T> {
        self.headers.get(name)?.parse().ok()
    }
}
