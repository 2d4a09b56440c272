//! Name patterns for grants and read scopes: a literal name, or a prefix written `name*`
//! (`*` alone matches every name). Matching is exact and case-sensitive, as names are.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Pattern {
    /// Exactly this name.
    Literal(String),
    /// Every name starting with this text; the empty prefix (`*`) matches every name.
    Prefix(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid pattern {0:?}: use a name, a prefix ending in '*', or '*' alone (1 to 255 characters, no spaces or control characters, '*' only at the end)")]
pub struct InvalidPattern(pub String);

impl Pattern {
    /// Every name.
    pub fn any() -> Self {
        Self::Prefix(String::new())
    }

    pub fn parse(text: &str) -> Result<Self, InvalidPattern> {
        let refuse = || Err(InvalidPattern(text.chars().take(64).collect()));
        let (stem, prefix) = match text.strip_suffix('*') {
            Some(stem) => (stem, true),
            None => (text, false),
        };
        let printable = |c: char| c.is_ascii_graphic() && c != '*';
        if text.is_empty() || text.len() > 255 || !stem.chars().all(printable) {
            return refuse();
        }
        Ok(if prefix {
            Self::Prefix(stem.to_owned())
        } else {
            Self::Literal(stem.to_owned())
        })
    }

    pub fn matches(&self, name: &str) -> bool {
        match self {
            Self::Literal(literal) => literal == name,
            Self::Prefix(prefix) => name.starts_with(prefix.as_str()),
        }
    }

    /// Whether this pattern matches every name.
    pub fn is_any(&self) -> bool {
        matches!(self, Self::Prefix(p) if p.is_empty())
    }

    /// Whether every name this pattern matches, `other` matches too.
    pub fn within(&self, other: &Pattern) -> bool {
        match (self, other) {
            (_, Self::Prefix(p)) if p.is_empty() => true,
            (Self::Literal(a), other) => other.matches(a),
            (Self::Prefix(a), Self::Prefix(b)) => a.starts_with(b.as_str()),
            (Self::Prefix(_), Self::Literal(_)) => false,
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Literal(name) => f.write_str(name),
            Self::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

impl TryFrom<String> for Pattern {
    type Error = InvalidPattern;
    fn try_from(text: String) -> Result<Self, InvalidPattern> {
        Self::parse(&text)
    }
}

impl From<Pattern> for String {
    fn from(pattern: Pattern) -> String {
        pattern.to_string()
    }
}

/// Which names a reader may see: those some `allow` pattern matches and no `deny` pattern does.
/// An empty `allow` list sees nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Scope {
    pub allow: Vec<Pattern>,
    pub deny: Vec<Pattern>,
}

impl Scope {
    /// Every name.
    pub fn everything() -> Self {
        Self {
            allow: vec![Pattern::any()],
            deny: Vec::new(),
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.allow.iter().any(|p| p.matches(name)) && !self.deny.iter().any(|p| p.matches(name))
    }

    /// Whether this scope holds every name.
    pub fn is_everything(&self) -> bool {
        self.deny.is_empty() && self.allow.iter().any(Pattern::is_any)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_prefixes_and_the_star() {
        let p = |s: &str| Pattern::parse(s).unwrap();
        assert!(p("invoice").matches("invoice"));
        assert!(!p("invoice").matches("invoices"));
        assert!(p("inv*").matches("invoice"));
        assert!(!p("inv*").matches("order"));
        assert!(p("*").matches("anything") && p("*").is_any());
        assert_eq!(p("inv*").to_string(), "inv*");
        for bad in ["", "a*b", "**", "a b", "a\n", "a\0", &"x".repeat(256)] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn within_is_containment() {
        let p = |s: &str| Pattern::parse(s).unwrap();
        assert!(p("invoice").within(&p("inv*")));
        assert!(p("invo*").within(&p("inv*")));
        assert!(!p("in*").within(&p("inv*")));
        assert!(!p("inv*").within(&p("invoice")));
        assert!(p("inv*").within(&p("*")));
    }

    #[test]
    fn deny_beats_allow_in_a_scope() {
        let scope = Scope {
            allow: vec![Pattern::any()],
            deny: vec![Pattern::parse("secret*").unwrap()],
        };
        assert!(scope.contains("invoice"));
        assert!(!scope.contains("secrets"));
        assert!(!scope.is_everything());
        assert!(!Scope::default().contains("invoice"));
        assert!(Scope::everything().is_everything());
    }
}
