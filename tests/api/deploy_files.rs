//! The operator files in `deploy/`: the Prometheus alert rules and the Grafana dashboard.
//!
//! - promtool parses the rules and passes their unit tests (`keel-alerts.test.yml`), and parses
//!   every dashboard query;
//! - every metric they name is one `src/metrics.rs` exports, as Prometheus shows it (histograms
//!   only as `_bucket`, `_sum` and `_count`), and the dashboard shows every one of them;
//! - every alert has a `for:`, a severity, a summary, a description, a runbook section in
//!   `docs/ops/alerts.md`, and unit tests that see it both fire and stay quiet;
//! - every dashboard panel queries through the `${datasource}` variable.
//!
//! promtool comes from `KEEL_TEST_PROMTOOL` or the cache `scripts/promtool` fills; without it these
//! tests fail, they are not skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use keel::metrics::{Description, Kind, DESCRIPTIONS};
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

const RULES: &str = "deploy/prometheus/keel-alerts.yml";
const RULE_TESTS: &str = "deploy/prometheus/keel-alerts.test.yml";
const DASHBOARD: &str = "deploy/grafana/keel-dashboard.json";
const RUNBOOK: &str = "docs/ops/alerts.md";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleGroup {
    name: String,
    rules: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    alert: Option<String>,
    record: Option<String>,
    expr: String,
    #[serde(rename = "for")]
    hold: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// The parts of promtool's unit-test file these checks read.
#[derive(Deserialize)]
struct RuleTestFile {
    tests: Vec<RuleTest>,
}

#[derive(Deserialize)]
struct RuleTest {
    #[serde(default)]
    input_series: Vec<InputSeries>,
    #[serde(default)]
    alert_rule_test: Vec<AlertTest>,
}

#[derive(Deserialize)]
struct InputSeries {
    series: String,
}

#[derive(Deserialize)]
struct AlertTest {
    alertname: String,
    #[serde(default)]
    exp_alerts: Vec<yaml_serde::Value>,
}

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_path(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

fn rules() -> RuleFile {
    yaml_serde::from_str(&read(RULES)).unwrap_or_else(|e| panic!("{RULES} does not parse: {e}"))
}

fn rule_tests() -> RuleTestFile {
    yaml_serde::from_str(&read(RULE_TESTS))
        .unwrap_or_else(|e| panic!("{RULE_TESTS} does not parse: {e}"))
}

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"))
}

fn alerts(file: &RuleFile) -> impl Iterator<Item = (&str, &Rule)> {
    file.groups
        .iter()
        .flat_map(|g| &g.rules)
        .filter_map(|r| r.alert.as_deref().map(|name| (name, r)))
}

/// The names Prometheus shows for keel's metrics: a histogram `h` as `h_bucket`, `h_sum` and
/// `h_count` (never `h` itself); counters and gauges as named (the exporter adds no unit or
/// `_total` suffix: keel's names carry their own).
fn exported_names() -> BTreeSet<String> {
    DESCRIPTIONS.iter().flat_map(exported_as).collect()
}

fn exported_as(d: &Description) -> Vec<String> {
    let suffixes: &[&str] = match d.kind {
        Kind::Histogram => &["_bucket", "_sum", "_count"],
        Kind::Counter | Kind::Gauge => &[""],
    };
    suffixes.iter().map(|s| format!("{}{s}", d.name)).collect()
}

/// The metric names a PromQL expression (or a Grafana query) selects: the identifiers left once
/// strings, label matchers `{...}`, ranges `[...]`, Grafana's `$variables`, the label lists of
/// `by`/`without`/`on`/`ignoring`/`group_left`/`group_right`, function names, aggregation
/// operators and keywords are set aside. Refuses unbalanced brackets and unclosed strings.
fn metric_names(expr: &str) -> Result<BTreeSet<String>, String> {
    const LABEL_LISTS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "inf",
        "nan",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let next_visible = |from: usize| chars[from..].iter().copied().find(|c| !c.is_whitespace());
    let mut names = BTreeSet::new();
    let mut depth = 0;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i = end_of_string(&chars, i)?;
        } else if c == '{' || c == '[' {
            i = closing(&chars, i)?;
        } else if c == '$' {
            i += 1;
            if chars.get(i) == Some(&'{') {
                i = closing(&chars, i)?;
            } else {
                while i < chars.len() && is_word(chars[i]) {
                    i += 1;
                }
                continue;
            }
        } else if c.is_ascii_digit() || c == '.' {
            // Numbers and durations: 0.99, 1e3, 5m, 1h30m.
            while i < chars.len() && (is_word(chars[i]) || chars[i] == '.') {
                i += 1;
            }
            continue;
        } else if is_word(c) {
            let start = i;
            while i < chars.len() && is_word(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = next_visible(i);
            if LABEL_LISTS.contains(&word.as_str()) {
                if next == Some('(') {
                    let open = i + chars[i..].iter().position(|c| *c == '(').unwrap_or(0);
                    i = closing(&chars, open)? + 1;
                }
            } else if !KEYWORDS.contains(&word.as_str()) && next != Some('(') {
                names.insert(word);
            }
            continue;
        } else if c == '(' {
            depth += 1;
        } else if c == ')' && depth > 0 {
            depth -= 1;
        } else if matches!(c, ')' | '}' | ']') {
            return Err(format!("unbalanced {c:?} at {i}"));
        }
        i += 1;
    }
    if depth != 0 {
        return Err(format!("{depth} unclosed '('"));
    }
    Ok(names)
}

/// The index of the quote that closes the string opening at `start`.
fn end_of_string(chars: &[char], start: usize) -> Result<usize, String> {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if quote != '`' => i += 2,
            c if c == quote => return Ok(i),
            _ => i += 1,
        }
    }
    Err(format!("unclosed string at {start}"))
}

/// The index of the bracket that closes the one at `open`, skipping strings and nested brackets.
fn closing(chars: &[char], open: usize) -> Result<usize, String> {
    let mut stack = vec![chars[open]];
    let mut i = open + 1;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => i = end_of_string(chars, i)?,
            c @ ('(' | '{' | '[') => stack.push(c),
            c @ (')' | '}' | ']') => {
                let expected = match stack.pop() {
                    Some('(') => ')',
                    Some('{') => '}',
                    _ => ']',
                };
                if c != expected {
                    return Err(format!("{c:?} at {i} closes nothing open"));
                }
                if stack.is_empty() {
                    return Ok(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    Err(format!("{:?} at {open} is never closed", chars[open]))
}

/// Problems with the names `expr` (from `place`) selects: unknown to `known`, or unparsable.
fn unknown_names(place: &str, expr: &str, known: &BTreeSet<String>) -> Vec<String> {
    match metric_names(expr) {
        Err(e) => vec![format!("{place}: cannot read {expr:?}: {e}")],
        Ok(names) if names.is_empty() => vec![format!("{place}: {expr:?} names no metric")],
        Ok(names) => names
            .into_iter()
            .filter(|n| !known.contains(n))
            .map(|n| format!("{place}: {n} is not a metric src/metrics.rs exports (in {expr:?})"))
            .collect(),
    }
}

/// Every query on the dashboard, with where it is: panel targets (rows' nested panels too) and
/// the templating variables' `label_values(SELECTOR, LABEL)` selectors.
fn dashboard_queries(dash: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in panels(dash) {
        let title = panel["title"].as_str().unwrap_or("?");
        for t in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                out.push((format!("panel {title:?}"), expr.to_owned()));
            }
        }
    }
    for var in dash["templating"]["list"].as_array().into_iter().flatten() {
        if var["type"] != "query" {
            continue;
        }
        let name = var["name"].as_str().unwrap_or("?");
        let query = var["query"]["query"]
            .as_str()
            .or(var["query"].as_str())
            .unwrap_or_default();
        let selector = query
            .strip_prefix("label_values(")
            .and_then(|rest| rest.rsplit_once(','))
            .map(|(selector, _label)| selector.to_owned())
            .unwrap_or_else(|| query.to_owned());
        out.push((format!("variable ${name}"), selector));
    }
    out
}

/// Every panel that is not a row, nested ones included.
fn panels(dash: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().into_iter().flatten() {
        if p["type"] == "row" {
            out.extend(p["panels"].as_array().into_iter().flatten());
        } else {
            out.push(p);
        }
    }
    out
}

fn promtool() -> PathBuf {
    let bin = std::env::var_os("KEEL_TEST_PROMTOOL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/keel-tools/promtool/promtool"));
    assert!(
        bin.exists(),
        "promtool is missing at {}: run scripts/promtool once (it unpacks it from Debian's \
         prometheus package), or set KEEL_TEST_PROMTOOL",
        bin.display()
    );
    bin
}

/// Runs promtool in `dir` and fails with its output unless it succeeds.
fn run_promtool(dir: &Path, args: &[&str]) {
    let out = Command::new(promtool())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_alert_rules_parse_and_pass_their_promtool_unit_tests() {
    let dir = repo_path("deploy/prometheus");
    run_promtool(&dir, &["check", "rules", "keel-alerts.yml"]);
    run_promtool(&dir, &["test", "rules", "keel-alerts.test.yml"]);
}

#[test]
fn every_alert_says_how_long_how_bad_and_what_to_do_and_has_a_runbook_section() {
    let file = rules();
    let runbook = read(RUNBOOK);
    let sections: BTreeSet<&str> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("### "))
        .filter(|h| h.starts_with("Keel"))
        .collect();
    let mut names = BTreeSet::new();
    for (name, rule) in alerts(&file) {
        assert!(names.insert(name), "{name} is defined twice");
        assert!(
            rule.record.is_none(),
            "{name} is both an alert and a record"
        );
        assert!(
            rule.hold.as_deref().is_some_and(|f| !f.is_empty()),
            "{name} has no for:"
        );
        let severity = rule.labels.get("severity").map(String::as_str);
        assert!(
            matches!(severity, Some("critical" | "warning" | "info")),
            "{name}: severity is {severity:?}, not critical, warning or info"
        );
        for key in ["summary", "description", "runbook"] {
            assert!(
                rule.annotations
                    .get(key)
                    .is_some_and(|v| !v.trim().is_empty()),
                "{name} has no {key} annotation"
            );
        }
        let anchor = format!("{RUNBOOK}#{}", name.to_lowercase());
        assert_eq!(rule.annotations["runbook"], anchor, "{name}'s runbook link");
        assert!(
            sections.contains(name),
            "{RUNBOOK} has no '### {name}' section"
        );
    }
    assert!(names.len() >= 15, "only {names:?}");
    let orphans: Vec<_> = sections.difference(&names).collect();
    assert!(
        orphans.is_empty(),
        "{RUNBOOK} describes alerts that do not exist: {orphans:?}"
    );
    for group in &file.groups {
        assert!(group.name.starts_with("keel-"), "group {}", group.name);
        for rule in &group.rules {
            if let Some(record) = &rule.record {
                assert!(
                    record.starts_with("keel:") && record.split(':').count() == 3,
                    "recording rule {record} is not named keel:metric:operation"
                );
            }
        }
    }
}

#[test]
fn every_alert_has_unit_tests_that_see_it_fire_and_stay_quiet() {
    let file = rules();
    let tests = rule_tests();
    let cases: Vec<&AlertTest> = tests
        .tests
        .iter()
        .flat_map(|t| &t.alert_rule_test)
        .collect();
    for (name, _) in alerts(&file) {
        let of_it = || cases.iter().filter(|c| c.alertname == name);
        assert!(
            of_it().any(|c| !c.exp_alerts.is_empty()),
            "{RULE_TESTS} never expects {name} to fire"
        );
        assert!(
            of_it().any(|c| c.exp_alerts.is_empty()),
            "{RULE_TESTS} never expects {name} to stay quiet"
        );
    }
}

#[test]
fn every_metric_the_rules_the_tests_and_the_dashboard_name_is_one_keel_exports() {
    let exported = exported_names();
    let file = rules();
    let mut known = exported.clone();
    known.extend(
        file.groups
            .iter()
            .flat_map(|g| &g.rules)
            .filter_map(|r| r.record.clone()),
    );
    let mut problems = Vec::new();
    for rule in file.groups.iter().flat_map(|g| &g.rules) {
        let place = rule
            .alert
            .as_deref()
            .or(rule.record.as_deref())
            .unwrap_or("?");
        problems.extend(unknown_names(place, &rule.expr, &known));
    }
    // The unit tests feed raw metrics, as keel exports them.
    for s in rule_tests().tests.iter().flat_map(|t| &t.input_series) {
        problems.extend(unknown_names(RULE_TESTS, &s.series, &exported));
    }
    let queries = dashboard_queries(&dashboard());
    for (place, expr) in &queries {
        problems.extend(unknown_names(place, expr, &exported));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // And the dashboard shows every metric keel has.
    let shown: BTreeSet<String> = queries
        .iter()
        .flat_map(|(_, expr)| metric_names(expr).unwrap_or_default())
        .collect();
    let missing: Vec<&str> = DESCRIPTIONS
        .iter()
        .filter(|d| !exported_as(d).iter().any(|n| shown.contains(n)))
        .map(|d| d.name)
        .collect();
    assert!(
        missing.is_empty(),
        "{DASHBOARD} shows nothing of {missing:?}"
    );
}

#[test]
fn every_dashboard_panel_queries_keel_through_the_datasource_variable() {
    let dash = dashboard();
    assert!(
        dash["schemaVersion"].as_u64().is_some_and(|v| v >= 39),
        "schemaVersion {}",
        dash["schemaVersion"]
    );
    assert!(dash["uid"].as_str().is_some_and(|u| !u.is_empty()));
    let vars: BTreeMap<&str, &Value> = dash["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .map(|v| (v["name"].as_str().unwrap_or_default(), v))
        .collect();
    assert_eq!(vars["datasource"]["type"], "datasource");
    assert_eq!(vars["datasource"]["query"], "prometheus");
    for name in ["instance", "sink", "group"] {
        let var = vars.get(name).unwrap_or_else(|| panic!("no ${name}"));
        assert_eq!(var["type"], "query", "${name}");
        assert_eq!(var["datasource"]["uid"], "${datasource}", "${name}");
    }

    let rows: Vec<&str> = dash["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter(|p| p["type"] == "row")
        .filter_map(|p| p["title"].as_str())
        .collect();
    assert!(rows.len() >= 8, "rows: {rows:?}");

    let builtins = ["__rate_interval", "__interval", "__range"];
    let mut ids = BTreeSet::new();
    let all = panels(&dash);
    assert!(all.len() >= 20, "{} panels", all.len());
    for panel in all {
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "a panel without a title: {panel}");
        assert!(ids.insert(panel["id"].as_u64()), "{title}: id used twice");
        let pos = &panel["gridPos"];
        let (x, w) = (pos["x"].as_u64(), pos["w"].as_u64());
        assert!(
            x.zip(w).is_some_and(|(x, w)| w > 0 && x + w <= 24) && pos["h"].as_u64() > Some(0),
            "{title}: gridPos {pos}"
        );
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        assert!(!targets.is_empty(), "{title} has no targets");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}: {t}");
            assert!(
                t["refId"].as_str().is_some_and(|r| !r.is_empty()),
                "{title}: {t}"
            );
            let expr = t["expr"].as_str().unwrap_or_default();
            assert!(!expr.trim().is_empty(), "{title} has a target without expr");
            for var in variables(expr) {
                assert!(
                    vars.contains_key(var.as_str()) || builtins.contains(&var.as_str()),
                    "{title}: ${var} is not a dashboard variable"
                );
            }
        }
    }
}

/// The `$name` and `${name}` variables a Grafana query uses.
fn variables(expr: &str) -> Vec<String> {
    expr.split('$')
        .skip(1)
        .map(|rest| {
            let rest = rest.strip_prefix('{').unwrap_or(rest);
            rest.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

#[test]
fn promtool_parses_every_dashboard_query() {
    // Each query, its Grafana variables filled in, becomes a recording rule promtool must parse.
    let mut file = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in dashboard_queries(&dashboard()).iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$__interval", "1m")
            .replace("$__range", "1h")
            .replace("${datasource}", "prometheus");
        let expr = ["$instance", "$sink", "$group"]
            .iter()
            .fold(expr, |e, v| e.replace(v, ".*"));
        let quoted = serde_json::to_string(&expr).unwrap();
        file.push_str(&format!(
            "      - record: dashboard:query:{i}\n        expr: {quoted}\n"
        ));
    }
    let dir = std::env::temp_dir().join(format!("keel-test-dashboard-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("dashboard.yml"), &file).unwrap();
    let checked =
        std::panic::catch_unwind(|| run_promtool(&dir, &["check", "rules", "dashboard.yml"]));
    std::fs::remove_dir_all(&dir).ok();
    if let Err(failure) = checked {
        std::panic::resume_unwind(failure);
    }
}

#[test]
fn the_metric_name_check_catches_a_misspelt_or_misused_name() {
    let exported = exported_names();
    // What the extractor takes out of a Grafana query: the metric, nothing else.
    let query = r#"histogram_quantile(0.99, sum by (le, instance) (rate(keel_append_duration_seconds_bucket{instance=~"$instance", outcome!="}"}[$__rate_interval])))"#;
    assert_eq!(
        metric_names(query).unwrap(),
        BTreeSet::from(["keel_append_duration_seconds_bucket".to_owned()])
    );
    let joined = "max by (sink) (keel_outbox_undelivered_age_seconds) > 120 unless on (sink) \
                  max by (sink) (changes(keel_relay_position[5m] offset 1h)) > 0";
    assert_eq!(
        metric_names(joined).unwrap(),
        BTreeSet::from([
            "keel_outbox_undelivered_age_seconds".to_owned(),
            "keel_relay_position".to_owned()
        ])
    );
    assert!(unknown_names("ok", joined, &exported).is_empty());

    // A typo, a gauge read as a histogram, a histogram without its suffix, and a recording rule
    // nothing records: each is reported.
    for (expr, name) in [
        (
            "max by (component) (keel_pipline_status) >= 2",
            "keel_pipline_status",
        ),
        (
            "sum(keel_outbox_parked_bucket)",
            "keel_outbox_parked_bucket",
        ),
        (
            "rate(keel_append_duration_seconds[5m])",
            "keel_append_duration_seconds",
        ),
        (
            "keel:append_requests:rate1m > 0",
            "keel:append_requests:rate1m",
        ),
    ] {
        let problems = unknown_names("test", expr, &exported);
        assert_eq!(problems.len(), 1, "{expr}: {problems:?}");
        assert!(problems[0].contains(name), "{expr}: {problems:?}");
    }
    // An expression that names nothing, or that cannot be read, is reported too.
    assert_eq!(unknown_names("test", "vector(1)", &exported).len(), 1);
    assert!(metric_names(r#"sum(keel_dlq_depth{group="a)"#).is_err());
    assert!(metric_names("sum(keel_dlq_depth))").is_err());
}
