//! Stacks left behind by test processes that were killed.
//!
//! testcontainers removes a stack's containers when it is dropped, and its watchdog does so on
//! SIGINT, SIGTERM and SIGQUIT; a test process killed with SIGKILL (a CI timeout, an OOM kill, a
//! crashed IDE) leaves them running. So every container a stack creates carries the label
//! [`OWNER`]: this machine's boot id, the test process's pid and that process's start time. Before
//! a stack starts, [`reap`] removes every container whose owner was on this machine in this boot
//! and no longer runs (a pid reused by another process has another start time), then the networks
//! of those stacks, and stack networks left empty for ten minutes (the watchdog's leftovers).
//!
//! Containers owned by another machine (an engine shared over TCP) or another boot are never
//! touched: from here there is no telling whether their owner still runs. Off Linux, where the
//! owner cannot be read, nothing is labelled for reaping and nothing is reaped.

use std::collections::{BTreeSet, HashMap};

use testcontainers::bollard::query_parameters::{
    ListContainersOptions, ListNetworksOptions, RemoveContainerOptions,
};
use testcontainers::core::client::docker_client_instance;

use crate::{Error, Result};

/// The label naming the process that owns a container: `<boot id>/<pid>/<start time>`.
pub const OWNER: &str = "dev.keel.testkit.owner";
/// The label naming the stack a container belongs to (its network is `keel-testkit-<id>-net`).
pub const STACK: &str = "dev.keel.testkit.stack";

/// A stack network older than this with no container left is removed.
pub const EMPTY_NETWORK_AGE: std::time::Duration = std::time::Duration::from_secs(600);

/// This process as an owner, or `None` where it cannot be told (no `/proc`).
pub fn this_process() -> Option<String> {
    owner_of(std::process::id())
}

fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|id| id.trim().to_owned())
}

/// `<boot id>/<pid>/<start time>` of a running process, from `/proc/<pid>/stat`.
fn owner_of(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces: fields are counted after its end.
    let after_name = &stat[stat.rfind(')')? + 1..];
    // Field 22 of stat is the start time; after the name, field 3 is the first.
    let started = after_name.split_whitespace().nth(19)?;
    Some(format!("{}/{pid}/{started}", boot_id()?))
}

/// Whether the owner a label names is gone: on this machine in this boot, and its pid is not the
/// same process any more. Anything else (another boot or machine, a malformed label) counts as
/// alive, so it is left alone.
fn is_gone(owner: &str) -> bool {
    let mut parts = owner.split('/');
    let (Some(boot), Some(pid), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    boot_id().as_deref() == Some(boot) && owner_of(pid).as_deref() != Some(owner)
}

/// Removes the containers (with their anonymous volumes) and networks of stacks whose test
/// process is gone, and stack networks empty for [`EMPTY_NETWORK_AGE`]; returns how many
/// containers it removed.
pub async fn reap() -> Result<usize> {
    reap_networks_older_than(EMPTY_NETWORK_AGE).await
}

/// [`reap`], with another age for empty stack networks.
pub async fn reap_networks_older_than(age: std::time::Duration) -> Result<usize> {
    let engine = docker_client_instance()
        .await
        .map_err(|e| Error::NoEngine {
            detail: e.to_string(),
        })?;
    let filters = HashMap::from([("label".to_owned(), vec![OWNER.to_owned()])]);
    let containers = engine
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .map_err(|e| Error::NoEngine {
            detail: format!("listing containers: {e}"),
        })?;
    let mut removed = 0;
    let mut stacks = BTreeSet::new();
    for container in containers {
        let labels = container.labels.unwrap_or_default();
        let (Some(id), Some(owner)) = (container.id, labels.get(OWNER)) else {
            continue;
        };
        if !is_gone(owner) {
            continue;
        }
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        // Another reaper may have been first; what matters is that it is gone.
        if engine.remove_container(&id, Some(options)).await.is_ok() {
            removed += 1;
        }
        if let Some(stack) = labels.get(STACK) {
            stacks.insert(stack.clone());
        }
    }
    // The networks of those stacks, and any stack network that has been empty for a while: the
    // watchdog removes a stopped process's containers but not its network. The engine refuses to
    // remove a network that a container still uses, and the age spares one a stack is creating.
    let networks = engine
        .list_networks(Some(ListNetworksOptions {
            filters: Some(HashMap::from([(
                "name".to_owned(),
                vec!["keel-testkit-".to_owned()],
            )])),
        }))
        .await
        .unwrap_or_default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    for network in networks {
        let Some(name) = network.name else { continue };
        let of_dead_stack = stacks
            .iter()
            .any(|stack| name == crate::containers::Names::new(stack).network);
        let old = network
            .created
            .is_some_and(|created| now - created.unix_timestamp() >= age.as_secs() as i64);
        if of_dead_stack || (old && name.ends_with("-net")) {
            let _ = engine.remove_network(&name).await;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_made_up_pid_of_this_boot_is_gone() {
        let Some(me) = this_process() else {
            eprintln!("SKIPPED: no /proc here, so owners cannot be told");
            return;
        };
        assert!(!is_gone(&me), "{me}");
        let boot = me.split('/').next().unwrap();
        // This process's pid with another start time is a reused pid: gone.
        assert!(is_gone(&format!("{boot}/{}/1", std::process::id())));
        // Another boot, or a label that is not an owner: left alone.
        assert!(!is_gone("another-boot/1/1"));
        assert!(!is_gone("garbage"));
    }
}
