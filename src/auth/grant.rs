//! Grants in domain words: who may do which [`Action`] on which names. Deny by default; a
//! matching deny beats every allow.
//!
//! Each action names one kind of resource ([`Action::resource`]): appends and reads name
//! aggregate types (and appends also event types: both patterns must match), registry actions
//! name subjects, projection actions projection names, saga actions saga names, dead-letter
//! actions consumer groups,
//! `replay.run` the target topic. Actions on the whole system (the outbox, principals, the audit
//! log, the job list, metrics, retention) take `*` only.
//!
//! The built-in roles are fixed sets of grants ([`role_grants`]); custom grants are stored per
//! principal (`grants` table) and added to its roles'.

use std::fmt;

use serde::Serialize;

use super::principal::Role;
use crate::model::{InvalidPattern, Pattern};

named!(
    /// What a request does, in the words grants use.
    Action, InvalidAction, "action" {
        EventAppend = "event.append",
        EventRead = "event.read",
        ProjectionRead = "projection.read",
        ProjectionRebuild = "projection.rebuild",
        SagaRead = "saga.read",
        SagaRedrive = "saga.redrive",
        RegistryRead = "registry.read",
        RegistryWrite = "registry.write",
        RegistryDelete = "registry.delete",
        RegistryConfig = "registry.config",
        OutboxRead = "outbox.read",
        OutboxRetry = "outbox.retry",
        OutboxSkip = "outbox.skip",
        DlqRead = "dlq.read",
        DlqRetry = "dlq.retry",
        DlqSkip = "dlq.skip",
        ReplayRun = "replay.run",
        RetentionSet = "retention.set",
        PrincipalManage = "principal.manage",
        AuditRead = "audit.read",
        JobRead = "job.read",
        Metrics = "metrics",
    }
);

named!(
    /// Whether a grant allows or denies.
    Effect, InvalidEffect, "effect" {
        Allow = "allow",
        Deny = "deny",
    }
);

/// The kind of name an action's grants match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    AggregateType,
    Subject,
    Projection,
    Saga,
    ConsumerGroup,
    Topic,
    /// The whole system: grants name `*`.
    System,
}

impl Action {
    /// Whether this is an operator action: its refusals are recorded in the audit log, as its
    /// successes are (reads of data are counted, not audited).
    pub fn is_operator(self) -> bool {
        use Action::*;
        matches!(
            self,
            OutboxRetry
                | OutboxSkip
                | DlqRetry
                | DlqSkip
                | ReplayRun
                | ProjectionRebuild
                | SagaRedrive
                | RetentionSet
                | PrincipalManage
                | AuditRead
        )
    }

    pub fn resource(self) -> Resource {
        use Action::*;
        match self {
            EventAppend | EventRead => Resource::AggregateType,
            ProjectionRead | ProjectionRebuild => Resource::Projection,
            SagaRead | SagaRedrive => Resource::Saga,
            RegistryRead | RegistryWrite | RegistryDelete | RegistryConfig => Resource::Subject,
            DlqRead | DlqRetry | DlqSkip => Resource::ConsumerGroup,
            ReplayRun => Resource::Topic,
            OutboxRead | OutboxRetry | OutboxSkip | RetentionSet | PrincipalManage | AuditRead
            | JobRead | Metrics => Resource::System,
        }
    }
}

/// One grant: `effect` `action` on names matching `resource` (and, for `event.append`, event
/// types matching `event_type`; `*` for every other action).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Grant {
    pub effect: Effect,
    pub action: Action,
    pub resource: Pattern,
    pub event_type: Pattern,
}

/// A grant that cannot be stored, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidGrant {
    #[error(transparent)]
    Action(#[from] InvalidAction),
    #[error(transparent)]
    Effect(#[from] InvalidEffect),
    #[error(transparent)]
    Pattern(#[from] InvalidPattern),
    #[error("{0} acts on the whole system: its resource must be '*'")]
    SystemWide(Action),
    #[error("only event.append grants name an event type; {0} takes '*'")]
    EventType(Action),
}

impl Grant {
    /// A grant from its four words, checked: system-wide actions take `*`, and only appends
    /// name event types.
    pub fn parse(
        effect: &str,
        action: &str,
        resource: &str,
        event_type: &str,
    ) -> Result<Self, InvalidGrant> {
        let grant = Self {
            effect: Effect::parse(effect)?,
            action: Action::parse(action)?,
            resource: Pattern::parse(resource)?,
            event_type: Pattern::parse(event_type)?,
        };
        if grant.action.resource() == Resource::System && !grant.resource.is_any() {
            return Err(InvalidGrant::SystemWide(grant.action));
        }
        if grant.action != Action::EventAppend && !grant.event_type.is_any() {
            return Err(InvalidGrant::EventType(grant.action));
        }
        Ok(grant)
    }

    fn allow(action: Action) -> Self {
        Self {
            effect: Effect::Allow,
            action,
            resource: Pattern::any(),
            event_type: Pattern::any(),
        }
    }

    /// Whether this grant speaks about `action` on `resource` (and `event_type`).
    pub(super) fn covers(&self, action: Action, resource: &str, event_type: Option<&str>) -> bool {
        self.action == action
            && self.resource.matches(resource)
            && event_type.is_none_or(|t| self.event_type.matches(t))
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} on {}", self.effect, self.action, self.resource)?;
        if self.action == Action::EventAppend {
            write!(f, " for event types {}", self.event_type)?;
        }
        Ok(())
    }
}

/// What a built-in role allows, on every name.
pub fn role_grants(role: Role) -> Vec<Grant> {
    use Action::*;
    let actions: &[Action] = match role {
        Role::Producer => &[EventAppend, RegistryRead],
        // Jobs say who rebuilt or republished what: a read, like the pipeline's state.
        Role::Reader => &[EventRead, ProjectionRead, SagaRead, RegistryRead, JobRead],
        Role::RegistryAdmin => &[RegistryRead, RegistryWrite, RegistryDelete, RegistryConfig],
        // Runs the pipeline; does not manage principals or read the audit log (separation of
        // duties: the audit log watches operators too).
        Role::Operator => &[
            EventRead,
            ProjectionRead,
            ProjectionRebuild,
            SagaRead,
            SagaRedrive,
            RegistryRead,
            OutboxRead,
            OutboxRetry,
            OutboxSkip,
            DlqRead,
            DlqRetry,
            DlqSkip,
            ReplayRun,
            RetentionSet,
            JobRead,
            Metrics,
        ],
        Role::Admin => Action::ALL,
    };
    actions.iter().map(|&a| Grant::allow(a)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_parse_in_domain_words_and_refuse_nonsense() {
        let g = Grant::parse("allow", "event.append", "invoice", "invoice.*").unwrap();
        assert_eq!(
            g.to_string(),
            "allow event.append on invoice for event types invoice.*"
        );
        assert!(g.covers(Action::EventAppend, "invoice", Some("invoice.paid")));
        assert!(!g.covers(Action::EventAppend, "order", Some("invoice.paid")));
        assert!(!g.covers(Action::EventAppend, "invoice", Some("order.placed")));
        assert!(matches!(
            Grant::parse("allow", "audit.read", "x", "*"),
            Err(InvalidGrant::SystemWide(Action::AuditRead))
        ));
        assert!(matches!(
            Grant::parse("allow", "event.read", "x", "y"),
            Err(InvalidGrant::EventType(Action::EventRead))
        ));
        assert!(Grant::parse("permit", "event.read", "x", "*").is_err());
        assert!(Grant::parse("allow", "event.write", "x", "*").is_err());
        assert!(Grant::parse("allow", "event.read", "a*b", "*").is_err());
    }

    #[test]
    fn admin_holds_every_action_and_operator_not_principal_management() {
        let actions =
            |role| -> Vec<Action> { role_grants(role).iter().map(|g| g.action).collect() };
        assert_eq!(actions(Role::Admin), Action::ALL);
        assert!(!actions(Role::Operator).contains(&Action::PrincipalManage));
        assert!(!actions(Role::Operator).contains(&Action::AuditRead));
        assert!(!actions(Role::Producer).contains(&Action::EventRead));
        assert!(role_grants(Role::Reader)
            .iter()
            .all(|g| g.effect == Effect::Allow && g.resource.is_any()));
    }
}
