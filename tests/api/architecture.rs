//! The layering that `src/lib.rs` states, checked on the source: every `crate::` reference of a
//! top-level module points to a lower layer, so the import graph has no circle; `model` and `wire`
//! use no IO crate; the Kafka and Redis sinks never import each other; only `app` and `cli` start
//! components; command-line parsing and printing live in `cli` alone.
//!
//! References inside a file's `#[cfg(test)]` tail are not counted: tests may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module's layer, lowest first. A module may use modules of lower layers only.
const LAYERS: &[&[&str]] = &[
    &["model", "metrics", "retry", "shutdown", "tls"],
    &["schema", "catalog", "kafka"],
    &["wire"],
    &["store", "heartbeat"],
    &["config", "registry"],
    &["auth", "telemetry"],
    &["append", "relay", "consumer", "retry", "shutdown"],
    &["archive"],
    &["replay"],
    &["projection"],
    &["saga"],
    &["health", "jobs", "retention"],
    &["journey"],
    &["api"],
    &["ui"],
    &["app"],
    &["cli"],
];

/// Every `.rs` file under `src/`, with its top-level module (`src/store/log.rs` is `store`).
fn sources() -> Vec<(String, PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    files
        .into_iter()
        .map(|path| {
            let rel = path.strip_prefix(&src).unwrap();
            let top = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy();
            let module = top.trim_end_matches(".rs").to_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            (module, path, code_of(&text))
        })
        .collect()
}

/// The file without its `#[cfg(test)]` tail and without comments.
fn code_of(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines()
        .map(|line| match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules `code` names through `crate::`: `crate::store::…` and the items of
/// `crate::{store, relay::…}`.
fn crate_references(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Only the first segment of each item: `relay::{self, outbox}` names `relay`.
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.extend(first_segment(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            found.extend(first_segment(&item));
        } else {
            found.extend(first_segment(rest));
        }
    }
    found
}

fn first_segment(text: &str) -> Option<String> {
    let name: String = text
        .trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty() && name != "self").then_some(name)
}

fn layer_of(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|layer| layer.contains(&module))
        .unwrap_or_else(|| panic!("module {module} has no layer in LAYERS: add it"))
}

#[test]
fn every_module_uses_only_modules_of_lower_layers_so_the_graph_has_no_circle() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, _, code) in sources() {
        if module == "lib" || module == "main" {
            continue;
        }
        let refs = crate_references(&code);
        graph
            .entry(module.clone())
            .or_default()
            .extend(refs.into_iter().filter(|r| *r != module));
    }
    let mut upward = Vec::new();
    for (module, uses) in &graph {
        for used in uses {
            if layer_of(used) >= layer_of(module) {
                upward.push(format!("{module} -> {used}"));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that do not point down the layers of src/lib.rs: {upward:?}"
    );
}

#[test]
fn model_and_wire_use_no_io_crate() {
    const IO: &[&str] = &[
        "sqlx", "tokio", "rdkafka", "redis", "reqwest", "axum", "std::net", "std::fs",
    ];
    for (module, path, code) in sources() {
        if module != "model" && module != "wire" {
            continue;
        }
        for io in IO {
            assert!(
                !code.contains(&format!("{io}::")),
                "{} uses {io}",
                path.display()
            );
        }
    }
}

#[test]
fn the_kafka_and_redis_sinks_never_import_each_other() {
    for (_, path, code) in sources() {
        let name = path.file_name().unwrap().to_string_lossy();
        let parent = path
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy();
        if parent != "relay" {
            continue;
        }
        if name == "kafka.rs" {
            assert!(!code.contains("redis"), "relay/kafka.rs mentions redis");
        }
        if name == "redis.rs" {
            assert!(!code.contains("kafka"), "relay/redis.rs mentions kafka");
        }
    }
}

#[test]
fn command_line_parsing_and_printing_live_in_cli_alone() {
    for (module, path, code) in sources() {
        if module == "cli" || module == "main" {
            continue;
        }
        for marker in ["clap::", "#[arg(", "println!", "eprintln!", "print!("] {
            assert!(
                !code.contains(marker),
                "{} has {marker}: command-line code belongs in src/cli",
                path.display()
            );
        }
    }
}

#[test]
fn every_kafka_client_is_made_through_the_kafka_module_which_hides_secrets_in_its_errors() {
    for (module, path, code) in sources() {
        if module == "kafka" {
            continue;
        }
        for create in [".create()", ".create_with_context("] {
            assert!(
                !code.contains(create),
                "{} calls {create}: make Kafka clients with kafka::create, whose errors show no secret",
                path.display()
            );
        }
    }
}

#[test]
fn only_app_and_cli_start_components() {
    const STARTS: &[&str] = &[
        "relay::start(",
        "consumer::run(",
        "runner::run(",
        "Application::build",
    ];
    for (module, path, code) in sources() {
        if module == "app" || module == "cli" {
            continue;
        }
        for start in STARTS {
            assert!(
                !code.contains(start),
                "{} calls {start}: components are wired in src/app or src/cli",
                path.display()
            );
        }
    }
}

#[test]
fn the_reference_scanner_sees_grouped_and_nested_imports() {
    let refs = crate_references(
        "use crate::{model::{A, B}, relay::{self, outbox}, store};\nlet x = crate::wire::frame::encode();",
    );
    assert_eq!(
        refs,
        ["model", "relay", "store", "wire"]
            .into_iter()
            .map(String::from)
            .collect()
    );
}
