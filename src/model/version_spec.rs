//! [`VersionSpec`]: which schema version of an event type a reader or a path names.
//!
//! It belongs to the model because readers (projections, consumers, the log API) declare it, not
//! only the registry that resolves it.

use std::fmt;

/// A schema version as a reader or a path names it: a number or the latest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSpec {
    Latest,
    Number(i32),
}

/// Text that names no version; holds the first 50 characters of it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a version: use a positive integer or \"latest\"")]
pub struct InvalidVersion(pub String);

impl VersionSpec {
    /// `latest`, `-1` (Confluent's alias for latest) or a positive integer.
    pub fn parse(text: &str) -> Result<Self, InvalidVersion> {
        match text {
            "latest" | "-1" => Ok(Self::Latest),
            _ => match text.parse::<i32>() {
                Ok(n) if n > 0 => Ok(Self::Number(n)),
                _ => Err(InvalidVersion(text.chars().take(50).collect())),
            },
        }
    }
}

impl fmt::Display for VersionSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Latest => f.write_str("latest"),
            Self::Number(n) => write!(f, "{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_minus_one_and_positive_numbers_name_versions() {
        assert_eq!(VersionSpec::parse("latest"), Ok(VersionSpec::Latest));
        assert_eq!(VersionSpec::parse("-1"), Ok(VersionSpec::Latest));
        assert_eq!(VersionSpec::parse("3"), Ok(VersionSpec::Number(3)));
        assert_eq!(VersionSpec::Number(3).to_string(), "3");
        assert_eq!(VersionSpec::Latest.to_string(), "latest");
    }

    #[test]
    fn zero_negatives_and_words_are_refused() {
        for text in ["0", "-2", "first", "", "1.5"] {
            assert_eq!(
                VersionSpec::parse(text),
                Err(InvalidVersion(text.to_owned())),
                "{text}"
            );
        }
        let long = "x".repeat(80);
        assert_eq!(
            VersionSpec::parse(&long),
            Err(InvalidVersion("x".repeat(50)))
        );
    }
}
