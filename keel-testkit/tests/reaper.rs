//! A stack whose test process was killed with SIGKILL (no drop, no watchdog) is removed by the
//! next stack's start: its containers and its network.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use keel_testkit::{reaper, KeelStack};

/// Set in the child process this test starts: it starts a stack, prints its first container's
/// id, and waits to be killed.
const CHILD: &str = "KEEL_TESTKIT_REAPER_CHILD";

/// The tests here run one at a time: the second reaps every empty stack network, which would
/// include the first's while it is being created.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stack_left_by_a_killed_test_process_is_removed_when_the_next_one_starts() {
    if std::env::var_os(CHILD).is_some() {
        let stack = KeelStack::builder()
            .start()
            .await
            .expect("the child's stack");
        println!("started {}", stack.container_ids().join(" "));
        tokio::time::sleep(Duration::from_secs(600)).await;
        return;
    }
    if !common::engine_expected() {
        return;
    }
    let _serial = SERIAL.lock().await;
    if reaper::this_process().is_none() {
        panic!("this test needs /proc to tell whether a stack's owner runs");
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_stack_left_by_a_killed_test_process_is_removed_when_the_next_one_starts",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let ids: Vec<String> = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .find_map(|line| line.strip_prefix("started ").map(str::to_owned))
        .expect("the child to start its stack")
        .split(' ')
        .map(str::to_owned)
        .collect();
    assert_eq!(ids.len(), 4);
    let network = docker(&[
        "inspect",
        "-f",
        "{{range $n, $_ := .NetworkSettings.Networks}}{{$n}}{{end}}",
        &ids[1],
    ]);
    assert!(network.starts_with("keel-testkit-"), "{network}");
    // SIGKILL: neither the stack's drop nor the watchdog runs.
    child.kill().unwrap();
    child.wait().unwrap();
    for id in &ids {
        assert_eq!(
            docker(&["inspect", "-f", "{{.Id}}", id]),
            *id,
            "left behind until reaped"
        );
    }

    // The next stack to start reaps it first.
    let stack = KeelStack::builder().start().await.expect("the next stack");
    for id in &ids {
        assert_eq!(
            docker(&["ps", "-aq", "--no-trunc", "--filter", &format!("id={id}")]),
            "",
            "{id} still exists"
        );
    }
    assert_eq!(
        docker(&[
            "network",
            "ls",
            "-q",
            "--filter",
            &format!("name=^{network}$")
        ]),
        ""
    );
    // The stack that reaped is its own process's: left alone by a second reap.
    assert_eq!(reaper::reap().await.unwrap(), 0);
    for id in stack.container_ids() {
        assert!(!docker(&["ps", "-q", "--filter", &format!("id={id}")]).is_empty());
    }
}

/// A stack network nothing uses any more (what the watchdog leaves after SIGINT) is removed once
/// it is old enough; one a container still uses is refused by the engine and stays.
#[tokio::test(flavor = "multi_thread")]
async fn an_empty_stack_network_is_removed_and_one_in_use_is_not() {
    if std::env::var_os(CHILD).is_some() || !common::engine_expected() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let suffix = format!("{:x}", std::process::id());
    let empty = format!("keel-testkit-empty{suffix}-net");
    let used = format!("keel-testkit-used{suffix}-net");
    for name in [&empty, &used] {
        assert!(
            !docker(&["network", "create", name]).is_empty(),
            "cannot create {name}"
        );
    }
    let image = std::env::var("KEEL_REDIS_IMAGE").unwrap_or_else(|_| "redis:7".into());
    let user = docker(&["run", "-d", "--rm", "--network", &used, &image]);
    assert!(
        !user.is_empty(),
        "cannot start a container from {image}: {}",
        common::NEEDS
    );

    reaper::reap_networks_older_than(Duration::ZERO)
        .await
        .unwrap();
    let left = |name: &str| docker(&["network", "ls", "-q", "--filter", &format!("name=^{name}$")]);
    assert_eq!(left(&empty), "", "the empty network is still there");
    assert_ne!(left(&used), "", "the network in use was removed");

    docker(&["rm", "-f", &user]);
    docker(&["network", "rm", &used]);
}
