//! Reading a verified token's claims: strings, times and the roles claim.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::auth::principal::Role;

/// The claim `name` if it is a string.
pub(super) fn string<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    claims.get(name).and_then(Value::as_str)
}

/// The claim `name` as a NumericDate (seconds since the epoch, possibly fractional).
pub(super) fn timestamp(claims: &Map<String, Value>, name: &str) -> Option<DateTime<Utc>> {
    let value = claims.get(name)?;
    let seconds = value
        .as_i64()
        .or_else(|| value.as_f64().map(|s| s.floor() as i64))?;
    DateTime::from_timestamp(seconds, 0)
}

/// The built-in roles that the claim `path` names, sorted and without repeats.
///
/// `path` is first a top-level claim name (`roles`, or a namespaced `https://example.com/roles`);
/// failing that, when it has dots, a path into nested objects (`realm_access.roles`). The claim
/// is an array of strings or one space-separated string (as `scope` is). Values that are not
/// built-in role names, and values of other JSON types, grant nothing.
pub(super) fn roles(claims: &Map<String, Value>, path: &str) -> Vec<Role> {
    let found = claims.get(path).or_else(|| {
        let mut parts = path.split('.');
        let first = claims.get(parts.next()?)?;
        parts.try_fold(first, |value, part| value.as_object()?.get(part))
    });
    let names: Vec<&str> = match found {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        Some(Value::String(text)) => text.split_whitespace().collect(),
        _ => Vec::new(),
    };
    let mut roles: Vec<Role> = names
        .into_iter()
        .filter_map(|name| Role::parse(name).ok())
        .collect();
    roles.sort();
    roles.dedup();
    roles
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn roles_come_from_an_array_or_a_space_separated_string_and_unknown_names_grant_nothing() {
        let array = claims(json!({"roles": ["reader", "root", "producer", "reader", 7, null]}));
        assert_eq!(roles(&array, "roles"), [Role::Producer, Role::Reader]);

        let scope = claims(json!({"scope": "openid  admin profile Admin registry-admin"}));
        assert_eq!(roles(&scope, "scope"), [Role::RegistryAdmin, Role::Admin]);

        for nothing in [
            json!({}),
            json!({"roles": "ADMIN superuser"}),
            json!({"roles": {"admin": true}}),
            json!({"roles": 1}),
            json!({"roles": [["admin"]]}),
        ] {
            assert_eq!(roles(&claims(nothing.clone()), "roles"), [], "{nothing}");
        }
    }

    #[test]
    fn a_roles_claim_may_be_namespaced_or_a_dotted_path_into_nested_objects() {
        let keycloak = claims(json!({"realm_access": {"roles": ["operator", "offline_access"]}}));
        assert_eq!(roles(&keycloak, "realm_access.roles"), [Role::Operator]);

        let auth0 = claims(json!({"https://keel.example.com/roles": ["admin"]}));
        assert_eq!(
            roles(&auth0, "https://keel.example.com/roles"),
            [Role::Admin]
        );

        let top_level_first = claims(json!({
            "a.b": ["reader"],
            "a": {"b": ["admin"]},
        }));
        assert_eq!(roles(&top_level_first, "a.b"), [Role::Reader]);

        let not_an_object = claims(json!({"realm_access": ["admin"]}));
        assert_eq!(roles(&not_an_object, "realm_access.roles"), []);
    }

    #[test]
    fn times_are_whole_or_fractional_seconds_and_strings_are_strings() {
        let c = claims(json!({"exp": 1_700_000_000, "nbf": 1_700_000_000.9, "sub": 5, "iss": "x"}));
        assert_eq!(timestamp(&c, "exp").unwrap().timestamp(), 1_700_000_000);
        assert_eq!(timestamp(&c, "nbf").unwrap().timestamp(), 1_700_000_000);
        assert_eq!(timestamp(&c, "iat"), None);
        assert_eq!(string(&c, "sub"), None);
        assert_eq!(string(&c, "iss"), Some("x"));
    }
}
