//! Who a credential stands for: a principal, with its name, kind and built-in roles.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::grant::Grant;

/// A principal's name: 1 to 64 characters, lowercase ASCII letters, digits and `. _ @ -`,
/// starting with a letter or digit (the same rule as the `principals` table's check).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct PrincipalName(pub(super) String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid principal name: use 1 to 64 lowercase ASCII letters, digits, '.', '_', '@' or '-', starting with a letter or digit")]
pub struct InvalidName;

impl PrincipalName {
    pub fn parse(text: &str) -> Result<Self, InvalidName> {
        let allowed = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        let bytes = text.as_bytes();
        let ok = (1..=64).contains(&bytes.len())
            && allowed(bytes[0])
            && bytes
                .iter()
                .all(|&c| allowed(c) || matches!(c, b'.' | b'_' | b'@' | b'-'));
        if ok {
            Ok(Self(text.to_owned()))
        } else {
            Err(InvalidName)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PrincipalName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

named!(
    /// What a principal is: a service, a human or an administrator.
    Kind, InvalidKind, "principal kind" {
        Service = "service",
        Human = "human",
        Admin = "admin",
    }
);

named!(
    /// The built-in roles; what each allows is `grant::role_grants`.
    Role, InvalidRole, "role" {
        Producer = "producer",
        Reader = "reader",
        RegistryAdmin = "registry-admin",
        Operator = "operator",
        Admin = "admin",
    }
);

/// A principal as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    pub id: Uuid,
    pub name: PrincipalName,
    pub kind: Kind,
    pub roles: Vec<Role>,
    pub created_at: DateTime<Utc>,
    /// Set once the principal is disabled: none of its keys authenticates any more.
    pub disabled_at: Option<DateTime<Utc>>,
    /// Custom grants, on top of the roles', oldest first.
    pub grants: Vec<Grant>,
}

impl Principal {
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_tables_rule() {
        for good in [
            "admin",
            "billing-service",
            "alice@example.com",
            "a",
            "0.x_y",
        ] {
            assert!(PrincipalName::parse(good).is_ok(), "{good}");
        }
        let long = "a".repeat(65);
        for bad in [
            "",
            "Admin",
            "-admin",
            ".a",
            "a b",
            "a/b",
            "ä",
            "a\0",
            long.as_str(),
        ] {
            assert!(PrincipalName::parse(bad).is_err(), "{bad:?}");
        }
        assert!(PrincipalName::parse(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn roles_and_kinds_are_the_issues_names() {
        let roles: Vec<_> = Role::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            roles,
            ["producer", "reader", "registry-admin", "operator", "admin"]
        );
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Ok(*role));
        }
        assert!(Role::parse("Admin").is_err());
        assert!(Role::parse("root")
            .unwrap_err()
            .to_string()
            .contains("registry-admin"));
        assert_eq!(Kind::parse("human"), Ok(Kind::Human));
        assert!(Kind::parse("robot").is_err());
    }
}
