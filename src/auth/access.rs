//! [`Access`]: everything one caller may do, from its roles and custom grants, asked in the
//! words of a request: may it append this event type to this aggregate type, which aggregate
//! types may it read, may it retry this consumer group's dead letters.

use super::grant::{role_grants, Action, Effect, Grant};
use super::principal::Role;
use crate::model::Scope;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Access {
    grants: Vec<Grant>,
}

impl Access {
    /// The roles' grants and the custom ones together.
    pub fn new(roles: &[Role], custom: &[Grant]) -> Self {
        let mut grants: Vec<Grant> = roles.iter().flat_map(|&r| role_grants(r)).collect();
        grants.extend_from_slice(custom);
        Self { grants }
    }

    /// Every action on every name: `auth.mode = "none"`, and the library's own callers.
    pub fn everything() -> Self {
        Self::new(&[Role::Admin], &[])
    }

    /// Whether `action` on the name `resource` is allowed: some allow grant matches and no
    /// deny grant does. For actions on the whole system, `resource` is `*`.
    pub fn allows(&self, action: Action, resource: &str) -> bool {
        self.decide(action, resource, None)
    }

    /// Whether appending events of `event_type` to aggregates of `aggregate_type` is allowed:
    /// one allow grant matches both, and no deny grant matches both.
    pub fn allows_append(&self, aggregate_type: &str, event_type: &str) -> bool {
        self.decide(Action::EventAppend, aggregate_type, Some(event_type))
    }

    /// Whether some name is allowed for `action`: the check for listing routes, whose replies
    /// are then filtered with [`Access::scope`].
    pub fn allows_some(&self, action: Action) -> bool {
        self.grants
            .iter()
            .any(|g| g.action == action && g.effect == Effect::Allow)
    }

    /// The names `action` is allowed on, for filtering reads.
    pub fn scope(&self, action: Action) -> Scope {
        let mut scope = Scope::default();
        for g in self.grants.iter().filter(|g| g.action == action) {
            match g.effect {
                Effect::Allow => scope.allow.push(g.resource.clone()),
                // An append deny limited to some event types does not hide an aggregate type.
                Effect::Deny if g.event_type.is_any() => scope.deny.push(g.resource.clone()),
                Effect::Deny => {}
            }
        }
        scope
    }

    fn decide(&self, action: Action, resource: &str, event_type: Option<&str>) -> bool {
        let mut allowed = false;
        for g in &self.grants {
            if g.covers(action, resource, event_type) {
                match g.effect {
                    Effect::Deny => return false,
                    Effect::Allow => allowed = true,
                }
            }
        }
        allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(effect: &str, action: &str, resource: &str, event_type: &str) -> Grant {
        Grant::parse(effect, action, resource, event_type).unwrap()
    }

    #[test]
    fn deny_by_default() {
        let none = Access::new(&[], &[]);
        for action in Action::ALL {
            assert!(!none.allows(*action, "*"), "{action}");
            assert!(!none.allows_some(*action));
        }
        assert!(!none.scope(Action::EventRead).contains("invoice"));
    }

    #[test]
    fn an_append_needs_both_the_aggregate_type_and_the_event_type() {
        let access = Access::new(
            &[],
            &[grant("allow", "event.append", "invoice", "invoice.*")],
        );
        assert!(access.allows_append("invoice", "invoice.paid"));
        assert!(!access.allows_append("order", "invoice.paid"));
        assert!(!access.allows_append("invoice", "order.placed"));
        assert!(!access.allows(Action::EventRead, "invoice"));
    }

    #[test]
    fn deny_beats_allow_including_a_role() {
        let access = Access::new(
            &[Role::Reader, Role::Producer],
            &[
                grant("deny", "event.read", "payroll*", "*"),
                grant("deny", "event.append", "*", "invoice.void"),
            ],
        );
        assert!(access.allows(Action::EventRead, "invoice"));
        assert!(!access.allows(Action::EventRead, "payroll"));
        assert!(access.allows_append("invoice", "invoice.paid"));
        assert!(!access.allows_append("invoice", "invoice.void"));
        let scope = access.scope(Action::EventRead);
        assert!(scope.contains("invoice") && !scope.contains("payroll.eu"));
        // The event-type deny does not hide a whole aggregate type.
        assert!(access.scope(Action::EventAppend).contains("invoice"));
    }

    #[test]
    fn everything_allows_every_action() {
        let all = Access::everything();
        assert!(Action::ALL.iter().all(|a| all.allows(*a, "anything")));
        assert!(all.scope(Action::EventRead).is_everything());
    }
}
