//! What `keel dlq` and `keel outbox` share for key sequences: the flags that select sequences and
//! run a retry or skip over them, built into the API's own request
//! ([`crate::api::operator::bulk::Request`], what the UI sends too), the printing of an outcome,
//! and the hint of a refused confirmation.

use clap::Args;
use serde_json::Value;

use super::client::{self, Client, Need};
use crate::api::operator::bulk::{Outcome, Request, CONFIRM_ABOVE};
use crate::api::operator::page::SequencesQuery;
use crate::model::Age;

/// Which sequences: those whose head matches every filter given.
#[derive(Debug, Clone, Args)]
pub struct FilterArgs {
    /// Only sequences of this key (a record key; in the outbox, an aggregate id).
    #[arg(long)]
    pub key: Option<String>,
    /// Only sequences whose head failed with this reason class (`permanent`,
    /// `retries_exhausted`, `crash_loop`, `undecodable`; in the outbox the sink's error, such as
    /// `message_too_large`).
    #[arg(long)]
    pub reason_class: Option<String>,
    /// Only sequences whose head is an event of this type.
    #[arg(long)]
    pub event_type: Option<String>,
    /// Only sequences whose head first failed at least this long ago (`90s`, `15m`, `2h`, `7d`).
    #[arg(long)]
    pub older_than: Option<Age>,
}

/// How a retry or skip runs.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Every sequence.
    #[arg(long, conflicts_with_all = ["key", "reason_class", "event_type", "older_than"])]
    pub all: bool,
    /// Only count the rows it would touch; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Touch at most this many rows (whole sequences, in key order).
    #[arg(long)]
    pub max_count: Option<u64>,
    /// The count of rows it touches, typed back (see --dry-run): needed above 100 rows.
    #[arg(long)]
    pub confirm: Option<u64>,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The names of the selecting flags, for `required_unless_present_any` on a row id argument.
pub const SELECTORS: [&str; 5] = ["key", "reason_class", "event_type", "older_than", "all"];

/// The request these flags make (the caller adds the row id, the reason and `whole`).
pub fn request(filter: &FilterArgs, run: &RunArgs) -> Request {
    Request {
        key: filter.key.clone(),
        reason_class: filter.reason_class.clone(),
        event_type: filter.event_type.clone(),
        older_than: filter.older_than,
        all: run.all,
        dry_run: run.dry_run,
        max_count: run.max_count,
        confirm: run.confirm,
        ..Request::default()
    }
}

/// The query of a sequences page.
pub fn query(filter: &FilterArgs, limit: Option<i64>, after: Option<String>) -> SequencesQuery {
    SequencesQuery {
        key: filter.key.clone(),
        reason_class: filter.reason_class.clone(),
        event_type: filter.event_type.clone(),
        older_than: filter.older_than,
        limit,
        after,
        ..SequencesQuery::default()
    }
}

/// The query string of `query`.
pub fn query_pairs(query: &SequencesQuery) -> anyhow::Result<Vec<(&'static str, String)>> {
    let fields = serde_json::to_value(query)?;
    let names = [
        "sink",
        "key",
        "reason_class",
        "event_type",
        "older_than",
        "limit",
        "after",
    ];
    Ok(names
        .into_iter()
        .filter_map(|name| match &fields[name] {
            Value::Null => None,
            Value::String(s) => Some((name, s.clone())),
            other => Some((name, other.to_string())),
        })
        .collect())
}

/// How a command words its outcome: `done`, then `released` for the held rows behind skipped
/// heads, each with its count for `{n}`.
pub struct Wording {
    pub done: &'static str,
    pub released: &'static str,
}

/// POSTs `request` to `segments` and prints what happened (or, with `--json`, the outcome).
/// A run refused for want of a confirmation says how to confirm.
pub async fn send(
    client: &Client,
    segments: &[&str],
    request: &Request,
    need: Need<'_>,
    json: bool,
    wording: &Wording,
) -> anyhow::Result<()> {
    let answer = match client
        .post(segments, &serde_json::to_value(request)?, need)
        .await
    {
        Ok(answer) => answer,
        Err(client::Error::Api { code, details, .. }) if code == "confirmation_required" => {
            let n = details["would_touch"].as_u64().unwrap_or_default();
            let command = details["run_with"].as_str().unwrap_or_default();
            anyhow::bail!(
                "confirmation_required: this touches {n} rows (a run of more than \
                 {CONFIRM_ABOVE}, or one given --confirm, needs --confirm set to its count)\n  \
                 check it with --dry-run, then run it again with --confirm {n}: {command}"
            );
        }
        Err(e) => return Err(e.into()),
    };
    let outcome: Outcome = serde_json::from_value(answer)?;
    if json {
        println!("{}", serde_json::to_string(&outcome)?);
        return Ok(());
    }
    let Outcome {
        would_touch,
        touched,
        sequences,
        released,
        run_with,
        ..
    } = outcome;
    match touched {
        None => {
            println!(
                "would touch {would_touch} row(s) in {sequences} sequence(s) (dry run: nothing \
                 changed)"
            );
            if released > 0 {
                println!("{released} held row(s) behind those heads would flow again");
            }
            if let Some(command) = run_with {
                println!("to run it: {command}");
            }
        }
        Some(n) => {
            println!("{}", wording.done.replace("{n}", &n.to_string()));
            if released > 0 {
                println!("{}", wording.released.replace("{n}", &released.to_string()));
            }
        }
    }
    Ok(())
}

/// Prints the `next` token of a page, to stderr, when more may follow.
pub fn more(answer: &Value) {
    if let Some(next) = answer["next"].as_str() {
        eprintln!("more: run again with --after {next}");
    }
}

/// The words a POSIX shell splits a command line of [`crate::api::operator::bulk::command_line`]
/// into (plain words and single quotes, as it writes them), for the tests that parse it back.
#[cfg(test)]
pub fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let (mut quoted, mut escaped) = (false, false);
    for c in line.chars() {
        match c {
            _ if escaped => {
                escaped = false;
                word.get_or_insert_with(String::new).push(c);
            }
            '\\' if !quoted => escaped = true,
            '\'' => {
                quoted = !quoted;
                word.get_or_insert_with(String::new);
            }
            ' ' if !quoted => words.extend(word.take()),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    words
}
