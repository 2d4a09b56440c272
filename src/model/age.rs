//! [`Age`]: how long ago, written as a whole number and a unit (`90s`, `15m`, `2h`, `7d`), for
//! filters such as a dead letter's `older_than`. Stored and compared as whole seconds.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Age {
    seconds: i64,
}

/// The most an [`Age`] may be: about ten years, far beyond any retention, and small enough that
/// no timestamp arithmetic overflows.
const MAX_SECONDS: i64 = 3650 * 86_400;

const UNITS: [(char, i64); 4] = [('s', 1), ('m', 60), ('h', 3600), ('d', 86_400)];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid age {0:?}: use a whole number and a unit, s, m, h or d (for example 90s, 15m, 2h, 7d), at most 3650d")]
pub struct InvalidAge(pub String);

impl Age {
    pub fn parse(text: &str) -> Result<Self, InvalidAge> {
        let refuse = || InvalidAge(text.chars().take(32).collect());
        let unit = text.chars().last().ok_or_else(refuse)?;
        let (_, per) = UNITS.iter().find(|(u, _)| *u == unit).ok_or_else(refuse)?;
        let digits = &text[..text.len() - 1];
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(refuse());
        }
        let seconds = digits
            .parse::<i64>()
            .ok()
            .and_then(|n| n.checked_mul(*per))
            .filter(|s| *s <= MAX_SECONDS)
            .ok_or_else(refuse)?;
        Ok(Self { seconds })
    }

    pub fn seconds(self) -> i64 {
        self.seconds
    }
}

/// The largest unit that divides the age evenly, so `7200s` reads back as `2h`.
impl fmt::Display for Age {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (unit, per) = UNITS
            .iter()
            .rev()
            .find(|(_, per)| self.seconds % per == 0 && self.seconds != 0)
            .unwrap_or(&UNITS[0]);
        write!(f, "{}{unit}", self.seconds / per)
    }
}

impl FromStr for Age {
    type Err = InvalidAge;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for Age {
    type Error = InvalidAge;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Age> for String {
    fn from(age: Age) -> Self {
        age.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_number_and_a_unit_read_as_seconds_and_print_in_the_largest_even_unit() {
        let secs = |s: &str| Age::parse(s).unwrap().seconds();
        assert_eq!(secs("90s"), 90);
        assert_eq!(secs("15m"), 900);
        assert_eq!(secs("2h"), 7200);
        assert_eq!(secs("7d"), 604_800);
        assert_eq!(secs("0s"), 0);
        assert_eq!(Age::parse("7200s").unwrap().to_string(), "2h");
        assert_eq!(Age::parse("90s").unwrap().to_string(), "90s");
        assert_eq!(Age::parse("0d").unwrap().to_string(), "0s");
        assert_eq!(Age::parse("3650d").unwrap().seconds(), MAX_SECONDS);
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "",
            "s",
            "10",
            "10x",
            "-5m",
            "+5m",
            "1.5h",
            "5 m",
            "3651d",
            "99999999999999999999d",
            "5é",
        ] {
            assert!(Age::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn serde_uses_the_text_form() {
        let age: Age = serde_json::from_value(serde_json::json!("2h")).unwrap();
        assert_eq!(age.seconds(), 7200);
        assert_eq!(serde_json::to_value(age).unwrap(), serde_json::json!("2h"));
        assert!(serde_json::from_value::<Age>(serde_json::json!("2 hours")).is_err());
    }
}
