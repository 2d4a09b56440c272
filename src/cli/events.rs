//! `keel events journey ID`: where one event went (`/v1/events/{id}/journey`), one line per
//! hop; `--json` prints the answer as it came.

use clap::{Args, Subcommand};
use serde_json::Value;

use super::client::{Client, Need};

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// One event's hops: its outbox row and each relay sink, its Kafka topic, partition and
    /// offset, its Redis entry, each consumer group and projection.
    Journey(JourneyArgs),
}

#[derive(Debug, Args)]
pub struct JourneyArgs {
    /// The event's id.
    pub id: String,
    /// Print the JSON answer instead of one line per hop.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(client: &Client, command: EventsCommand) -> anyhow::Result<()> {
    let EventsCommand::Journey(args) = command;
    let segments = ["v1", "events", args.id.as_str(), "journey"];
    let body = client
        .get(&segments, &[], Need::system("event.read"))
        .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
    } else {
        print!("{}", text(&body));
    }
    Ok(())
}

/// A field as text: strings bare, `null` as `-`.
fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// The note of a hop, after its facts, when it has one.
fn note(v: &Value) -> String {
    v.as_str().map(|n| format!("  ({n})")).unwrap_or_default()
}

/// The journey as text: the event, then each hop.
fn text(j: &Value) -> String {
    let e = &j["event"];
    let mut out = format!(
        "event      {} {}/{} v{} {} at {} (position {})\n",
        s(&e["id"]),
        s(&e["aggregate_type"]),
        s(&e["aggregate_id"]),
        s(&e["version"]),
        s(&e["type"]),
        s(&e["created_at"]),
        s(&e["position"]),
    );
    let o = &j["outbox"];
    let row = if o["in_outbox"] == true {
        "in the outbox"
    } else {
        "row removed"
    };
    out.push_str(&format!(
        "outbox     relay partition {}, {row}\n",
        s(&o["partition"])
    ));
    for sink in o["sinks"].as_array().into_iter().flatten() {
        let parked = &sink["parked"];
        let why = match parked {
            Value::Null => String::new(),
            p => format!(
                "  {} attempts, {}: {}",
                s(&p["attempts"]),
                s(&p["error_class"]),
                s(&p["error"])
            ),
        };
        let off = if sink["enabled"] == false {
            " (disabled)"
        } else {
            ""
        };
        out.push_str(&format!(
            "  {:<8} {}{off}{why}\n",
            s(&sink["sink"]),
            s(&sink["state"])
        ));
    }
    let k = &j["kafka"];
    out.push_str(&format!(
        "kafka      {} partition {} offset {}{}\n",
        s(&k["topic"]),
        s(&k["partition"]),
        s(&k["offset"]),
        note(&k["offset_note"])
    ));
    let r = &j["redis"];
    out.push_str(&format!(
        "redis      {} entry {}{}\n",
        s(&r["stream"]),
        s(&r["entry_id"]),
        note(&r["entry_note"])
    ));
    for g in j["consumers"].as_array().into_iter().flatten() {
        let d = &g["dead_letter"];
        let why = match d {
            Value::Null => String::new(),
            d => format!("  {}: {}", s(&d["reason_class"]), s(&d["reason"])),
        };
        out.push_str(&format!(
            "group      {} {} (committed {}){why}{}\n",
            s(&g["group"]),
            s(&g["state"]),
            s(&g["committed_offset"]),
            note(&g["note"])
        ));
    }
    for p in j["projections"].as_array().into_iter().flatten() {
        let passed = match p["passed"].as_bool() {
            Some(true) => "passed",
            Some(false) => "not passed",
            None => "unknown",
        };
        out.push_str(&format!(
            "projection {} {passed} (next offset {}, {}){}\n",
            s(&p["name"]),
            s(&p["next_offset"]),
            s(&p["state"]),
            note(&p["note"])
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_hop_gets_a_line_with_its_state_and_why() {
        let journey = json!({
            "event": {"id": "e1", "position": 41, "aggregate_type": "agent", "aggregate_id": "a1",
                      "version": 3, "type": "agent.state.changed", "created_at": "2026-12-01T10:00:00Z"},
            "outbox": {"partition": 11, "in_outbox": false, "sinks": [
                {"sink": "kafka", "enabled": true, "state": "delivered", "parked": null},
                {"sink": "redis", "enabled": true, "state": "parked",
                 "parked": {"attempts": 2, "error_class": "wrong_type", "error": "WRONGTYPE"}}]},
            "kafka": {"topic": "keel.agent", "partition": 2, "offset": 1187, "offset_note": null},
            "redis": {"stream": "keel.stream.agent", "entry_id": null,
                      "entry_note": "not published: the redis sink's state is parked"},
            "consumers": [{"group": "billing", "state": "parked", "committed_offset": 1190,
                           "dead_letter": {"reason_class": "permanent", "reason": "poison"}, "note": null}],
            "projections": [{"name": "agent_status", "state": "running", "next_offset": 1201,
                             "passed": true, "note": null}],
        });
        let text = text(&journey);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 8, "{text}");
        assert!(
            lines[1].contains("relay partition 11, row removed"),
            "{text}"
        );
        assert!(
            lines[3].contains("parked  2 attempts, wrong_type: WRONGTYPE"),
            "{text}"
        );
        assert!(
            lines[4].ends_with("keel.agent partition 2 offset 1187"),
            "{text}"
        );
        assert!(lines[5].contains("entry -  (not published"), "{text}");
        assert!(
            lines[6].contains("billing parked (committed 1190)  permanent: poison"),
            "{text}"
        );
        assert!(
            lines[7].contains("agent_status passed (next offset 1201, running)"),
            "{text}"
        );
    }
}
