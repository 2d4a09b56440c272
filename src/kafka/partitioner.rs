//! The partition librdkafka's producer gives a keyed record, computed the way librdkafka does
//! (`rd_kafka_msg_partitioner_*` in `rdkafka_msg.c`), so that a reader can find a record from its
//! key and the topic's partition count without scanning every partition.
//!
//! keel's producer ([`super::producer_config`]) leaves librdkafka's default, `consistent_random`
//! (CRC-32 of the key); `relay.kafka.properties` may choose another with `partitioner`. For a
//! non-empty key the `_random` variants place exactly like their plain ones, and keel's keys are
//! aggregate ids, never empty.

use std::collections::BTreeMap;

/// A key-hashing partitioner of librdkafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partitioner {
    /// `consistent`, `consistent_random` (the default): CRC-32 (IEEE) of the key.
    Crc32,
    /// `murmur2`, `murmur2_random`: the Java producer's murmur2.
    Murmur2,
    /// `fnv1a`, `fnv1a_random`: FNV-1a, as Sarama's hash partitioner.
    Fnv1a,
}

/// The producer's partitioner does not place records by key (`random`), or is not one keel knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the producer's partitioner {0:?} does not place records by key")]
pub struct NotByKey(pub String);

impl Partitioner {
    /// The partitioner of a producer configured with `properties` applied last, as
    /// [`super::producer_config`] applies them.
    pub fn of(properties: &BTreeMap<String, String>) -> Result<Self, NotByKey> {
        let name = properties
            .get("partitioner")
            .map_or("consistent_random", String::as_str);
        match name {
            "consistent" | "consistent_random" => Ok(Partitioner::Crc32),
            "murmur2" | "murmur2_random" => Ok(Partitioner::Murmur2),
            "fnv1a" | "fnv1a_random" => Ok(Partitioner::Fnv1a),
            other => Err(NotByKey(other.to_owned())),
        }
    }

    /// The partition of a record keyed `key` on a topic of `partitions` partitions (> 0).
    pub fn partition(self, key: &[u8], partitions: i32) -> i32 {
        let n = partitions.max(1) as u32;
        let hash = match self {
            Partitioner::Crc32 => crc32fast::hash(key),
            Partitioner::Murmur2 => murmur2(key) & 0x7fff_ffff,
            Partitioner::Fnv1a => fnv1a(key),
        };
        (hash % n) as i32
    }
}

/// librdkafka's `rd_murmur2`: MurmurHash2 with the Java client's seed, little-endian words.
fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    let mut h = SEED ^ data.len() as u32;
    let mut words = data.chunks_exact(4);
    for word in &mut words {
        let mut k = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        for (i, byte) in tail.iter().enumerate() {
            h ^= u32::from(*byte) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

/// librdkafka's `rd_fnv1a`: 32-bit FNV-1a, then the absolute value of it as a signed number
/// (Sarama's), with `i32::MIN` left as it is (C's negation of it wraps too).
fn fnv1a(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for byte in data {
        h ^= u32::from(*byte);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h as i32).wrapping_abs() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys of librdkafka's own unit tests (`unittest_murmur2`, `unittest_fnv1a`).
    const KEYS: [&str; 11] = [
        "kafka",
        "giberish123456789",
        "1234",
        "234",
        "34",
        "4",
        "PreAmbleWillBeRemoved,ThePrePartThatIs",
        "reAmbleWillBeRemoved,ThePrePartThatIs",
        "eAmbleWillBeRemoved,ThePrePartThatIs",
        "AmbleWillBeRemoved,ThePrePartThatIs",
        "",
    ];

    #[test]
    fn murmur2_gives_the_java_clients_hashes() {
        let java: [u32; 11] = [
            0xd067cf64, 0x8f552b0c, 0x9fc97b14, 0xe7c009ca, 0x873930da, 0x5a4b5ca1, 0x78424f1c,
            0x4a62b377, 0xe0e4e09e, 0x62b8b43f, 0x106e08d9,
        ];
        for (key, want) in KEYS.iter().zip(java) {
            assert_eq!(murmur2(key.as_bytes()), want, "{key:?}");
        }
    }

    #[test]
    fn fnv1a_gives_librdkafkas_hashes() {
        let go: [u32; 11] = [
            0x0d33c4e1, 0x77a58295, 0x023bdd03, 0x2dea3cd2, 0x740fa83e, 0x310ca263, 0x65cbd69c,
            0x6e49c79a, 0x69eed356, 0x6abcc023, 0x7ee3623b,
        ];
        for (key, want) in KEYS.iter().zip(go) {
            assert_eq!(fnv1a(key.as_bytes()), want, "{key:?}");
        }
    }

    #[test]
    fn the_default_partitioner_is_crc32_of_the_key_modulo_the_partition_count() {
        let p = Partitioner::of(&BTreeMap::new()).unwrap();
        assert_eq!(p, Partitioner::Crc32);
        // CRC-32 of "123456789" is the check value 0xCBF43926 = 3421780262.
        assert_eq!(p.partition(b"123456789", 6), (3_421_780_262u64 % 6) as i32);
        assert_eq!(p.partition(b"123456789", 1), 0);
    }

    #[test]
    fn a_configured_partitioner_is_honoured_and_random_is_refused() {
        let with =
            |name: &str| Partitioner::of(&BTreeMap::from([("partitioner".into(), name.into())]));
        assert_eq!(with("murmur2_random"), Ok(Partitioner::Murmur2));
        assert_eq!(with("fnv1a"), Ok(Partitioner::Fnv1a));
        assert_eq!(with("consistent"), Ok(Partitioner::Crc32));
        assert_eq!(with("random"), Err(NotByKey("random".into())));
        // murmur2's partition is the positive hash modulo the count, as the Java client's.
        assert_eq!(
            Partitioner::Murmur2.partition(b"kafka", 7),
            ((0xd067cf64u32 & 0x7fff_ffff) % 7) as i32
        );
    }
}
