//! The `keel` command line that sends a request, for the UI to show beside its button and for a
//! dry run's `run_with`. `cli::dlq` and `cli::outbox` test that it parses back into the same
//! request.

use super::Request;

/// The `keel` command that sends `request`: `words` are the command and its fixed arguments
/// (`["dlq", "retry", "--group", "billing"]`), `one` the row id argument of a selection of one.
/// Values are quoted for a POSIX shell.
pub fn command_line(words: &[&str], one: Option<String>, request: &Request) -> String {
    let mut line: Vec<String> = std::iter::once("keel")
        .chain(words.iter().copied())
        .map(quote)
        .collect();
    line.extend(one.as_deref().map(quote));
    let mut flag = |name: &str, value: Option<String>| {
        if let Some(value) = value {
            line.push(format!("--{name}"));
            line.push(quote(&value));
        }
    };
    flag("sink", request.sink.clone());
    flag("key", request.key.clone());
    flag("reason-class", request.reason_class.clone());
    flag("event-type", request.event_type.clone());
    flag("older-than", request.older_than.map(|a| a.to_string()));
    flag("max-count", request.max_count.map(|n| n.to_string()));
    flag("confirm", request.confirm.map(|n| n.to_string()));
    flag("reason", request.reason.clone());
    let switches = [
        ("--all", request.all),
        ("--whole", request.whole),
        ("--dry-run", request.dry_run),
    ];
    line.extend(
        switches
            .iter()
            .filter(|(_, on)| *on)
            .map(|(s, _)| s.to_string()),
    );
    line.join(" ")
}

/// `word` for a POSIX shell: as it is when it holds only safe characters, otherwise in single
/// quotes (a quote inside as `'\''`).
fn quote(word: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Age;

    #[test]
    fn the_command_line_quotes_what_a_shell_would_split() {
        let request = Request {
            key: Some("it's a key".into()),
            reason: Some("bad data".into()),
            older_than: Some(Age::parse("7200s").unwrap()),
            dry_run: true,
            ..Request::default()
        };
        assert_eq!(
            command_line(&["dlq", "skip", "--group", "billing"], None, &request),
            "keel dlq skip --group billing --key 'it'\\''s a key' --older-than 2h \
             --reason 'bad data' --dry-run"
        );
        assert_eq!(quote(""), "''");
    }
}
