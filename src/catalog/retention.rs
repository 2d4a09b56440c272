//! Retention policies: how long an event type's events stay in PostgreSQL ("hot"), whether they
//! must be archived before they are deleted, how long the archive keeps them ("cold"), and legal
//! hold.
//!
//! `event.toml` holds the raw form, [`RetentionSpec`]: the short form `retention = "90d"` or a
//! `[retention]` table. [`RetentionSpec::policy`] turns it into a [`RetentionPolicy`] or refuses
//! it naming the key, so the rest of keel only ever sees a policy that makes sense. No key at all
//! is [`RetentionPolicy::FOREVER`]: nothing is ever purged.
//!
//! The rules that are refused, and why:
//! - an age that is not a whole number of days, weeks or years (`"90 days"`, `"1.5d"`, `"90"`),
//!   or is `0d`: a typo must not turn into "delete everything at once";
//! - `archive = "none"` without `allow_loss = true`: deleting without an archive loses history
//!   for good, so it must be said twice;
//! - `allow_loss` with an archive required, and `cold` with no archive: a key that has no effect
//!   means the author expected something else;
//! - `cold` shorter than `hot`: the archive would be allowed to go before the events leave
//!   PostgreSQL, which is deletion without an archive under another name.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A retention age: a whole number of days, written with a unit `d`, `w` (7 days) or `y`
/// (365 days), as in `90d`, `2w`, `7y`. At least `1d`, at most [`RetentionAge::MAX_DAYS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RetentionAge {
    days: u32,
}

const UNITS: [(char, u32); 3] = [('d', 1), ('w', 7), ('y', 365)];

/// What to write instead of an age that is not one.
const FORMAT: &str = "use a whole number and a unit d, w or y, as in 90d";

/// An age that [`RetentionAge::parse`] refused, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?}: {reason}")]
pub struct InvalidAge {
    text: String,
    reason: &'static str,
}

impl RetentionAge {
    /// 100 years: beyond any legal retention period, and far from any date arithmetic overflow.
    pub const MAX_DAYS: u32 = 100 * 365;

    pub fn parse(text: &str) -> Result<Self, InvalidAge> {
        let refuse = |reason| InvalidAge {
            text: text.chars().take(32).collect(),
            reason,
        };
        let unit = text.chars().last().ok_or_else(|| refuse(FORMAT))?;
        let (_, per) = UNITS
            .iter()
            .find(|(u, _)| *u == unit)
            .ok_or_else(|| refuse(FORMAT))?;
        let digits = &text[..text.len() - 1];
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(refuse(FORMAT));
        }
        // All digits, so a failed parse can only be an overflow.
        let days = digits
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(u64::from(*per)))
            .filter(|d| *d <= u64::from(Self::MAX_DAYS))
            .ok_or_else(|| refuse("at most 100y (36500d) is allowed"))?;
        if days == 0 {
            return Err(refuse("a retention age is at least 1d"));
        }
        Ok(Self { days: days as u32 })
    }

    pub fn days(self) -> u32 {
        self.days
    }
}

/// The largest unit that divides the age evenly, so `14d` reads back as `2w` and `730d` as `2y`.
impl fmt::Display for RetentionAge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (unit, per) = UNITS
            .iter()
            .rev()
            .find(|(_, per)| self.days.is_multiple_of(*per))
            .unwrap_or(&UNITS[0]);
        write!(f, "{}{unit}", self.days / per)
    }
}

impl FromStr for RetentionAge {
    type Err = InvalidAge;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for RetentionAge {
    type Error = InvalidAge;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<RetentionAge> for String {
    fn from(age: RetentionAge) -> Self {
        age.to_string()
    }
}

/// Whether events must be in a verified archive before they leave PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ArchiveRule {
    /// The default: purge only what a verified archive segment holds.
    Required,
    /// Purge without an archive; only with `allow_loss = true`.
    None,
}

/// An event type's validated retention policy. The catalog builds it from `event.toml` (see
/// [`RetentionSpec::policy`]); the combinations it refuses never reach a policy built there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetentionPolicy {
    /// How long events stay in PostgreSQL, counted from their `created_at`; `None` is forever.
    #[serde(serialize_with = "age_or_forever")]
    pub hot: Option<RetentionAge>,
    pub archive: ArchiveRule,
    /// Set (and required) when `archive` is [`ArchiveRule::None`].
    pub allow_loss: bool,
    /// How long the archive keeps events, counted from their `created_at` like `hot`; `None` is
    /// forever.
    #[serde(serialize_with = "age_or_forever")]
    pub cold: Option<RetentionAge>,
    /// Blocks every purge of the type (hot and cold) while set.
    pub legal_hold: bool,
}

impl RetentionPolicy {
    /// The policy of a type with no `retention` key: kept forever, never purged.
    pub const FOREVER: Self = Self {
        hot: None,
        archive: ArchiveRule::Required,
        allow_loss: false,
        cold: None,
        legal_hold: false,
    };

    /// Whether events of this type are ever deleted from PostgreSQL: a hot age is set and no legal
    /// hold blocks it. Other guards (the archive, the outbox, readers, the aggregate's history)
    /// still decide which events a run may delete.
    pub fn purges(&self) -> bool {
        self.hot.is_some() && !self.legal_hold
    }

    /// Whether events of this type may leave PostgreSQL only once a verified archive holds them.
    pub fn needs_archive(&self) -> bool {
        self.archive == ArchiveRule::Required
    }
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        Self::FOREVER
    }
}

/// The one-line form for plans and status output: `hot 90d, archive required, cold forever`,
/// `hot 30d, archive none (loss allowed)`, with `, legal hold` when one is set.
impl fmt::Display for RetentionPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let forever = |age: Option<RetentionAge>| age.map_or("forever".into(), |a| a.to_string());
        write!(f, "hot {}", forever(self.hot))?;
        match self.archive {
            ArchiveRule::Required => write!(f, ", archive required, cold {}", forever(self.cold))?,
            ArchiveRule::None => f.write_str(", archive none (loss allowed)")?,
        }
        if self.legal_hold {
            f.write_str(", legal hold")?;
        }
        Ok(())
    }
}

fn age_or_forever<S: Serializer>(age: &Option<RetentionAge>, s: S) -> Result<S::Ok, S::Error> {
    match age {
        Some(age) => s.collect_str(age),
        None => s.serialize_str("forever"),
    }
}

/// The `retention` key of `event.toml` as written: `retention = "90d"` (or `"forever"`), or a
/// `[retention]` table. Either a string or a table, like an untagged enum, but a malformed table
/// reports its own error (an unknown key, a wrong type) instead of "matched no variant".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetentionSpec {
    /// The short form: the hot age, with an archive required.
    Short(String),
    Table(RetentionTable),
}

/// The `[retention]` table as written; [`RetentionSpec::policy`] checks it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionTable {
    /// `"90d"`, `"2w"`, `"1y"` or `"forever"` (the default).
    pub hot: Option<String>,
    /// `"required"` (the default) or `"none"`.
    pub archive: Option<String>,
    pub allow_loss: Option<bool>,
    /// `"7y"` or `"forever"` (the default).
    pub cold: Option<String>,
    pub legal_hold: Option<bool>,
}

impl<'de> Deserialize<'de> for RetentionSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Either;

        impl<'de> Visitor<'de> for Either {
            type Value = RetentionSpec;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"an age such as "90d", "forever", or a [retention] table"#)
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                Ok(RetentionSpec::Short(text.to_owned()))
            }

            fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<Self::Value, M::Error> {
                RetentionTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RetentionSpec::Table)
            }
        }

        deserializer.deserialize_any(Either)
    }
}

/// A retention key that [`RetentionSpec::policy`] refused: the key (`retention.hot`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} {detail}")]
pub struct InvalidPolicy {
    key: &'static str,
    detail: String,
}

impl InvalidPolicy {
    fn new(key: &'static str, detail: impl Into<String>) -> Self {
        Self {
            key,
            detail: detail.into(),
        }
    }
}

impl RetentionSpec {
    /// The policy this key states, or the first key that is wrong and what to write instead.
    pub fn policy(&self) -> Result<RetentionPolicy, InvalidPolicy> {
        let table = match self {
            RetentionSpec::Short(text) => {
                return Ok(RetentionPolicy {
                    hot: age_or_forever_key("retention", text)?,
                    ..RetentionPolicy::FOREVER
                })
            }
            RetentionSpec::Table(table) => table,
        };
        let hot = match &table.hot {
            Some(text) => age_or_forever_key("retention.hot", text)?,
            None => None,
        };
        let cold = match &table.cold {
            Some(text) => age_or_forever_key("retention.cold", text)?,
            None => None,
        };
        let archive = match table.archive.as_deref() {
            None | Some("required") => ArchiveRule::Required,
            Some("none") => ArchiveRule::None,
            Some(other) => {
                return Err(InvalidPolicy::new(
                    "retention.archive",
                    format!(r#"{other:?}: use "required" or "none""#),
                ))
            }
        };
        let allow_loss = table.allow_loss.unwrap_or(false);
        match archive {
            ArchiveRule::None if !allow_loss => {
                return Err(InvalidPolicy::new(
                    "retention.archive",
                    r#"= "none" deletes events with no archive, for good: add allow_loss = true to accept that, or use archive = "required""#,
                ))
            }
            ArchiveRule::Required if table.allow_loss == Some(true) => {
                return Err(InvalidPolicy::new(
                    "retention.allow_loss",
                    r#"= true has no effect while an archive is required: remove it, or set archive = "none""#,
                ))
            }
            ArchiveRule::None if table.cold.is_some() => {
                return Err(InvalidPolicy::new(
                    "retention.cold",
                    r#"has no effect with archive = "none" (there is no archive to keep): remove it"#,
                ))
            }
            _ => {}
        }
        if let (Some(hot), Some(cold)) = (hot, cold) {
            if cold < hot {
                return Err(InvalidPolicy::new(
                    "retention.cold",
                    format!(
                        "{cold} is shorter than retention.hot {hot}: the archive could go before \
                         the events leave PostgreSQL; make cold at least {hot}"
                    ),
                ));
            }
        }
        Ok(RetentionPolicy {
            hot,
            archive,
            allow_loss,
            cold,
            legal_hold: table.legal_hold.unwrap_or(false),
        })
    }
}

/// `"forever"` as `None`, else an age; a refusal names `key`.
fn age_or_forever_key(
    key: &'static str,
    text: &str,
) -> Result<Option<RetentionAge>, InvalidPolicy> {
    if text == "forever" {
        return Ok(None);
    }
    RetentionAge::parse(text).map(Some).map_err(|e| {
        let or_forever = if e.reason == FORMAT {
            r#", or "forever""#
        } else {
            ""
        };
        InvalidPolicy::new(key, format!("{e}{or_forever}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `retention` as `event.toml` would hold it, checked.
    fn policy(toml_text: &str) -> Result<RetentionPolicy, String> {
        #[derive(Deserialize)]
        struct Doc {
            retention: RetentionSpec,
        }
        let doc: Doc = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        doc.retention.policy().map_err(|e| e.to_string())
    }

    fn refused(toml_text: &str) -> String {
        match policy(toml_text) {
            Ok(p) => panic!("{toml_text:?} was accepted as {p}"),
            Err(e) => e,
        }
    }

    #[test]
    fn an_age_is_whole_days_weeks_or_years() {
        for (text, days, shown) in [
            ("1d", 1, "1d"),
            ("90d", 90, "90d"),
            ("2w", 14, "2w"),
            ("14d", 14, "2w"),
            ("7y", 2555, "7y"),
            ("730d", 730, "2y"),
            ("090d", 90, "90d"),
            ("100y", 36_500, "100y"),
        ] {
            let age = RetentionAge::parse(text).unwrap();
            assert_eq!(
                (age.days(), age.to_string().as_str()),
                (days, shown),
                "{text}"
            );
        }
        let age: RetentionAge = serde_json::from_str(r#""2w""#).unwrap();
        assert_eq!(serde_json::to_string(&age).unwrap(), r#""2w""#);
    }

    #[test]
    fn an_age_without_one_unit_after_a_whole_number_is_refused_with_the_form_to_use() {
        for bad in [
            "90 days", "90", "1.5d", "", "d", "-1d", "+1d", " 90d", "90d ", "90D", "90dd", "1h",
            "forever", "1e3d", "٩٠d",
        ] {
            assert_eq!(
                RetentionAge::parse(bad).unwrap_err().to_string(),
                format!("{bad:?}: use a whole number and a unit d, w or y, as in 90d"),
            );
        }
    }

    #[test]
    fn an_age_of_zero_or_past_a_hundred_years_is_refused() {
        for zero in ["0d", "0w", "0y", "000d"] {
            assert_eq!(
                RetentionAge::parse(zero).unwrap_err().to_string(),
                format!("{zero:?}: a retention age is at least 1d"),
            );
        }
        for huge in [
            "101y",
            "36501d",
            "5215w",
            "4294967296d",
            "99999999999999999999999999d",
        ] {
            assert_eq!(
                RetentionAge::parse(huge).unwrap_err().to_string(),
                format!("{huge:?}: at most 100y (36500d) is allowed"),
            );
        }
    }

    #[test]
    fn the_short_form_is_the_hot_age_with_an_archive_required() {
        let p = policy(r#"retention = "90d""#).unwrap();
        assert_eq!(
            p,
            RetentionPolicy {
                hot: Some(RetentionAge::parse("90d").unwrap()),
                ..RetentionPolicy::FOREVER
            }
        );
        assert!(p.purges() && p.needs_archive());
        assert_eq!(p.to_string(), "hot 90d, archive required, cold forever");
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            serde_json::json!({"hot": "90d", "archive": "required", "allow_loss": false,
                "cold": "forever", "legal_hold": false})
        );
        assert_eq!(
            policy(r#"retention = "forever""#).unwrap(),
            RetentionPolicy::FOREVER
        );
    }

    #[test]
    fn forever_never_purges() {
        let p = RetentionPolicy::FOREVER;
        assert!(!p.purges() && p.needs_archive());
        assert_eq!(p, RetentionPolicy::default());
        assert_eq!(p.to_string(), "hot forever, archive required, cold forever");
        assert_eq!(policy("[retention]").unwrap(), p, "an empty table");
        assert_eq!(
            policy("[retention]\nhot = \"forever\"\ncold = \"forever\"").unwrap(),
            p
        );
    }

    #[test]
    fn the_table_form_sets_every_key() {
        let p = policy(
            "[retention]\nhot = \"1y\"\narchive = \"required\"\ncold = \"7y\"\nlegal_hold = false\nallow_loss = false",
        )
        .unwrap();
        assert_eq!(p.hot.map(RetentionAge::days), Some(365));
        assert_eq!(p.cold.map(RetentionAge::days), Some(7 * 365));
        assert!(p.purges() && p.needs_archive() && !p.allow_loss);
        assert_eq!(p.to_string(), "hot 1y, archive required, cold 7y");
        assert_eq!(serde_json::to_value(&p).unwrap()["cold"], "7y");

        let p =
            policy("[retention]\nhot = \"30d\"\narchive = \"none\"\nallow_loss = true").unwrap();
        assert!(p.purges() && !p.needs_archive() && p.allow_loss);
        assert_eq!(p.to_string(), "hot 30d, archive none (loss allowed)");

        // cold as long as hot is enough; hot forever allows any cold.
        assert!(policy("[retention]\nhot = \"1y\"\ncold = \"365d\"").is_ok());
        assert!(policy("[retention]\ncold = \"1d\"").is_ok());
    }

    #[test]
    fn a_legal_hold_alone_is_valid_and_blocks_every_purge() {
        let p = policy("[retention]\nlegal_hold = true").unwrap();
        assert!(p.legal_hold && !p.purges());
        assert_eq!(
            p.to_string(),
            "hot forever, archive required, cold forever, legal hold"
        );
        let p = policy("[retention]\nhot = \"90d\"\nlegal_hold = true").unwrap();
        assert!(!p.purges(), "a hold beats the hot age");
        assert_eq!(
            p.to_string(),
            "hot 90d, archive required, cold forever, legal hold"
        );
    }

    #[test]
    fn a_bad_age_is_refused_naming_its_key() {
        let form = r#"use a whole number and a unit d, w or y, as in 90d, or "forever""#;
        for (doc, expected) in [
            (
                r#"retention = "90 days""#,
                format!(r#"retention "90 days": {form}"#),
            ),
            (
                "[retention]\nhot = \"90 days\"",
                format!(r#"retention.hot "90 days": {form}"#),
            ),
            (
                "[retention]\nhot = \"90\"",
                format!(r#"retention.hot "90": {form}"#),
            ),
            (
                "[retention]\ncold = \"1.5y\"",
                format!(r#"retention.cold "1.5y": {form}"#),
            ),
            (
                "[retention]\nhot = \"Forever\"",
                format!(r#"retention.hot "Forever": {form}"#),
            ),
            (
                "[retention]\nhot = \"0d\"",
                r#"retention.hot "0d": a retention age is at least 1d"#.into(),
            ),
            (
                r#"retention = "0d""#,
                r#"retention "0d": a retention age is at least 1d"#.into(),
            ),
            (
                "[retention]\ncold = \"1000y\"",
                r#"retention.cold "1000y": at most 100y (36500d) is allowed"#.into(),
            ),
        ] {
            assert_eq!(refused(doc), expected, "{doc}");
        }
    }

    #[test]
    fn deleting_without_an_archive_must_be_allowed_in_so_many_words() {
        let need = r#"retention.archive = "none" deletes events with no archive, for good: add allow_loss = true to accept that, or use archive = "required""#;
        assert_eq!(
            refused("[retention]\nhot = \"30d\"\narchive = \"none\""),
            need
        );
        assert_eq!(
            refused("[retention]\nhot = \"30d\"\narchive = \"none\"\nallow_loss = false"),
            need
        );
        assert_eq!(
            refused("[retention]\nhot = \"30d\"\nallow_loss = true"),
            r#"retention.allow_loss = true has no effect while an archive is required: remove it, or set archive = "none""#
        );
        assert_eq!(
            refused("[retention]\nhot = \"30d\"\narchive = \"never\""),
            r#"retention.archive "never": use "required" or "none""#
        );
    }

    #[test]
    fn a_cold_age_that_cannot_hold_is_refused() {
        assert_eq!(
            refused(
                "[retention]\nhot = \"30d\"\narchive = \"none\"\nallow_loss = true\ncold = \"1y\""
            ),
            r#"retention.cold has no effect with archive = "none" (there is no archive to keep): remove it"#
        );
        assert_eq!(
            refused("[retention]\nhot = \"1y\"\ncold = \"90d\""),
            "retention.cold 90d is shorter than retention.hot 1y: the archive could go before the events leave PostgreSQL; make cold at least 1y"
        );
    }

    #[test]
    fn a_malformed_retention_key_is_a_parse_error_naming_what_is_wrong() {
        let unknown = refused("[retention]\nhots = \"90d\"");
        assert!(unknown.contains("unknown field `hots`"), "{unknown}");
        let number = refused("retention = 90");
        assert!(
            number.contains(r#"an age such as "90d", "forever", or a [retention] table"#),
            "{number}"
        );
        let hold = refused("[retention]\nlegal_hold = \"yes\"");
        assert!(
            hold.contains("legal_hold") && hold.contains("expected a boolean"),
            "{hold}"
        );
        let hot = refused("[retention]\nhot = 90");
        assert!(
            hot.contains("hot = 90") && hot.contains("expected a string"),
            "{hot}"
        );
    }
}
