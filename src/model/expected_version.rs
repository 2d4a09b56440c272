//! The optimistic-concurrency expectation sent with an append.

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// What the writer believes the aggregate's current version is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Append whatever the current version is.
    Any,
    /// The aggregate must not exist yet. `0` means the same.
    NoStream,
    /// The aggregate's current version must be exactly this (>= 1).
    Exact(i32),
}

impl ExpectedVersion {
    /// Builds from a number, mapping `0` to [`ExpectedVersion::NoStream`].
    pub fn from_number(n: i64) -> Option<Self> {
        match n {
            0 => Some(Self::NoStream),
            _ => i32::try_from(n).ok().filter(|v| *v > 0).map(Self::Exact),
        }
    }

    /// Whether an aggregate at `current` (0 = does not exist) satisfies the expectation.
    pub fn accepts(self, current: i32) -> bool {
        match self {
            Self::Any => true,
            Self::NoStream => current == 0,
            Self::Exact(v) => current == v,
        }
    }
}

impl Serialize for ExpectedVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Any => s.serialize_str("any"),
            Self::NoStream => s.serialize_str("no_stream"),
            Self::Exact(v) => s.serialize_i32(*v),
        }
    }
}

impl<'de> Deserialize<'de> for ExpectedVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        const EXPECTING: &str = "a version number >= 0, \"any\" or \"no_stream\"";
        impl Visitor<'_> for V {
            type Value = ExpectedVersion;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(EXPECTING)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
                ExpectedVersion::from_number(n)
                    .ok_or_else(|| E::invalid_value(de::Unexpected::Signed(n), &EXPECTING))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
                let signed = i64::try_from(n)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(n), &EXPECTING))?;
                self.visit_i64(signed)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                match s {
                    "any" => Ok(ExpectedVersion::Any),
                    "no_stream" => Ok(ExpectedVersion::NoStream),
                    _ => Err(E::invalid_value(de::Unexpected::Str(s), &EXPECTING)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form_and_rejects_the_rest() {
        let parse = |s: &str| serde_json::from_str::<ExpectedVersion>(s);
        assert_eq!(parse("\"any\"").unwrap(), ExpectedVersion::Any);
        assert_eq!(parse("\"no_stream\"").unwrap(), ExpectedVersion::NoStream);
        assert_eq!(parse("0").unwrap(), ExpectedVersion::NoStream);
        assert_eq!(parse("7").unwrap(), ExpectedVersion::Exact(7));
        for bad in ["-1", "1.5", "\"7\"", "null", "4294967296", "\"ANY\""] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn accepts_matches_the_current_version() {
        assert!(ExpectedVersion::Any.accepts(0));
        assert!(ExpectedVersion::NoStream.accepts(0));
        assert!(!ExpectedVersion::NoStream.accepts(1));
        assert!(ExpectedVersion::Exact(3).accepts(3));
        assert!(!ExpectedVersion::Exact(3).accepts(4));
    }
}
