//! Every example is a test fixture: each built binary is run as a learner would run it,
//! and its stdout and exit code are checked against `tests/golden/<topic>.txt`.
//! Examples that take `--backend` run on both backends, with the same expected stdout.
//!
//! `BLESS=1 cargo test --test examples` rewrites the golden files instead, for a change of
//! output made on purpose. The examples' own in-process tests check the values their
//! stories return, not the printed text.

mod common;

use std::time::Duration;

use common::{example, run_within, takes_backend, text, topics};
use microkit_testing::NatsServer;

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn every_topic_is_declared() {
    assert_eq!(topics(), common::example_dirs(), "tests/common's TOPICS and examples/ disagree");
}

#[test]
fn every_example_has_a_golden_file_a_note_and_an_in_process_test() {
    // The root package's examples, and those of an example that is a package of its own
    // (`examples/<topic>/Cargo.toml`, for dependencies the other examples should not build).
    let mut manifests = vec![common::root().join("Cargo.toml")];
    manifests.extend(
        topics().iter().map(|t| common::root().join("examples").join(t).join("Cargo.toml")),
    );
    let tested_examples: Vec<String> = manifests
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|manifest| {
            let manifest: toml::Table = manifest.parse().unwrap();
            let examples = manifest.get("example").and_then(toml::Value::as_array).cloned();
            examples.unwrap_or_default()
        })
        .filter(|example| example.get("test").and_then(toml::Value::as_bool) == Some(true))
        .filter_map(|example| Some(example.get("name")?.as_str()?.to_owned()))
        .collect();
    let mut missing = Vec::new();
    for topic in topics() {
        if !common::golden::dir().join(format!("{topic}.txt")).is_file() {
            missing.push(format!("{topic}: no tests/golden/{topic}.txt (BLESS=1 creates it)"));
        }
        if !common::root().join("notes").join(format!("{topic}.md")).is_file() {
            missing.push(format!("{topic}: no notes/{topic}.md"));
        }
        if !tested_examples.contains(&topic) {
            missing.push(format!("{topic}: no [[example]] entry with `test = true` in Cargo.toml"));
        }
    }
    assert!(missing.is_empty(), "topics slipping in untested:\n{}", missing.join("\n"));
}

/// A topic whose library later topics use lists under `[dependencies]` only the crates that
/// library names; its example program's crates are `[dev-dependencies]`. Otherwise every
/// topic built on the library compiles them too (round-robin would build health's HTTP
/// probes and axum), which is what a learner's first build pays for.
#[test]
fn a_topic_library_depends_only_on_the_crates_it_names() {
    let mut extra = Vec::new();
    for topic in topics() {
        let dir = common::root().join("examples").join(&topic);
        let manifest: toml::Table =
            std::fs::read_to_string(dir.join("Cargo.toml")).unwrap().parse().unwrap();
        let Some(lib) = manifest.get("lib") else { continue };
        let root = lib.get("path").and_then(toml::Value::as_str).unwrap_or("src/lib.rs");
        let source = library_source(&dir.join(root));
        let dependencies = manifest.get("dependencies").and_then(toml::Value::as_table);
        for name in dependencies.into_iter().flat_map(|table| table.keys()) {
            let name = name.replace('-', "_");
            let named = [format!("{name}::"), format!("use {name}"), format!("{name}!")]
                .iter()
                .any(|form| source.contains(form.as_str()));
            // Code generated from a proto names its codec crate, not the file including it.
            let generated = name == "tonic_prost" && source.contains("env!(\"OUT_DIR\")");
            if !named && !generated {
                extra.push(format!("{topic}: the library never names `{name}`"));
            }
        }
    }
    assert!(extra.is_empty(), "move these to [dev-dependencies]:\n{}", extra.join("\n"));
}

/// Every crate a package of the workspace lists (a topic, the helpers, the benches, this
/// one), for its program, tests or build script alike, is named in its code (comments
/// aside): a crate nobody names still costs a build, and in a topic the learner's first one.
#[test]
fn no_package_lists_a_crate_its_code_never_names() {
    let root = common::root();
    let mut packages = vec![root.to_path_buf(), root.join("benches")];
    packages.extend(
        ["shared", "shared/backend", "shared/http", "shared/testing"].map(|p| root.join(p)),
    );
    packages.extend(topics().iter().map(|topic| root.join("examples").join(topic)));
    let mut unused = Vec::new();
    for dir in packages {
        let manifest: toml::Table =
            std::fs::read_to_string(dir.join("Cargo.toml")).unwrap().parse().unwrap();
        let code = package_code(&dir);
        let package = match dir.strip_prefix(root).unwrap().display().to_string() {
            folder if folder.is_empty() => "the root package".to_owned(),
            folder => folder,
        };
        for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
            let table = manifest.get(section).and_then(toml::Value::as_table);
            for name in table.into_iter().flat_map(|table| table.keys()) {
                // Code names a crate by its library's name, which one package changes.
                let name = match name.as_str() {
                    "cloudevents-sdk" => "cloudevents".to_owned(),
                    other => other.replace('-', "_"),
                };
                let named = [format!("{name}::"), format!("use {name}"), format!("{name}!")]
                    .iter()
                    .any(|form| code.contains(form.as_str()));
                let generated = name == "tonic_prost"
                    && (code.contains("include_proto!") || code.contains("env!(\"OUT_DIR\")"));
                if !named && !generated {
                    unused.push(format!("{package} [{section}]: `{name}` is never named"));
                }
            }
        }
    }
    assert!(unused.is_empty(), "remove these, or name them in the code:\n{}", unused.join("\n"));
}

/// The code lines (comments left out) of every `.rs` file in a package's folder, leaving
/// out the folders of other packages inside it and `target`.
fn package_code(dir: &std::path::Path) -> String {
    let mut code = String::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                let nested = path.join("Cargo.toml").is_file();
                if !nested && !path.ends_with("target") && !path.ends_with(".git") {
                    folders.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                let source = std::fs::read_to_string(&path).unwrap();
                for line in source.lines().filter(|l| !l.trim_start().starts_with("//")) {
                    code.push_str(line);
                    code.push('\n');
                }
            }
        }
    }
    code
}

/// The text of a library's files outside its test modules: `root` and every file a
/// `mod name;` reaches from it (`name.rs` beside the file, or in a folder named after it).
fn library_source(root: &std::path::Path) -> String {
    let mut text = String::new();
    let mut files = vec![root.to_path_buf()];
    while let Some(file) = files.pop() {
        let source = std::fs::read_to_string(&file).unwrap();
        let mut after_cfg_test = false;
        for line in source.lines() {
            let declared = line.trim().trim_start_matches("pub ").trim_start_matches("pub(crate) ");
            if let Some(name) = declared.strip_prefix("mod ").and_then(|m| m.strip_suffix(';')) {
                if !after_cfg_test {
                    let stem = file.with_extension("");
                    let beside = file.with_file_name(format!("{name}.rs"));
                    let nested = stem.join(format!("{name}.rs"));
                    files.push(if beside.is_file() { beside } else { nested });
                }
            } else if !line.trim_start().starts_with("//") {
                // A comment naming a crate is no use of it.
                text.push_str(line);
                text.push('\n');
            }
            after_cfg_test = line.trim() == "#[cfg(test)]";
        }
    }
    text
}

#[tokio::test]
async fn every_example_prints_its_golden_output_and_exits_0() {
    let nats = NatsServer::start().await.expect("the NATS runs need nats-server");
    let mut failures = Vec::new();
    for topic in topics() {
        let mut runs = vec![("default", example(&topic))];
        if takes_backend(&topic) {
            let mut memory = example(&topic);
            memory.env("MICRO_BACKEND", "memory");
            let mut on_nats = example(&topic);
            on_nats.env("MICRO_BACKEND", "nats").env("NATS_URL", nats.url());
            runs.extend([("memory", memory), ("nats", on_nats)]);
        }
        for (backend, mut command) in runs {
            // Only stdout is compared: the info lines on stderr are there to tell, when a
            // run fails, what it was doing (a retry, a reconnect...).
            command.env("RUST_LOG", "info");
            let output = run_within(command, LIMIT).await;
            let stdout = text(&output.stdout);
            if !output.status.success() {
                failures.push(format!(
                    "{topic} ({backend}): exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
                    output.status.code(),
                    text(&output.stderr)
                ));
                continue;
            }
            // The same comparison (and BLESS) as the in-process tests.
            if let Err(difference) = common::golden::compare(&topic, &stdout) {
                failures.push(format!("{topic} ({backend}): {difference}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[tokio::test]
async fn every_example_refuses_an_unknown_flag_with_a_message() {
    for topic in topics() {
        let mut command = example(&topic);
        command.arg("--no-such-flag");
        let output = run_within(command, LIMIT).await;
        assert_eq!(output.status.code(), Some(2), "{topic} accepted --no-such-flag");
        let stderr = text(&output.stderr);
        assert!(stderr.contains("unexpected argument '--no-such-flag'"), "{topic}: {stderr}");
        assert!(output.stdout.is_empty(), "{topic} printed results despite a bad flag");
    }
}

#[tokio::test]
async fn every_backend_example_names_an_unreachable_nats_url() {
    // Port 1 on loopback: nothing listens there.
    let url = "nats://127.0.0.1:1";
    let backend_topics: Vec<String> = topics().into_iter().filter(|t| takes_backend(t)).collect();
    assert!(!backend_topics.is_empty(), "no example takes --backend");
    for topic in backend_topics {
        let mut command = example(&topic);
        command.env("NATS_URL", url);
        let output = run_within(command, LIMIT).await;
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{topic}: {stderr}");
        assert!(stderr.starts_with("error: ") && stderr.contains(url), "{topic}: {stderr}");
        assert!(output.stdout.is_empty(), "{topic} printed results without its backend");
    }
}

/// An example that starts a private nats-server and is then killed outright (SIGKILL: no
/// Drop runs, no handler) must not leave the server behind.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_private_nats_server_dies_with_a_killed_example() {
    // A long TTL makes the run last long enough to be killed mid-way.
    let mut command = example("round-robin");
    command.env("MICRO_BACKEND", "nats").args(["--ttl-ms", "20000"]);
    let mut child = command.spawn().expect("spawning round-robin");
    let pid = child.id().unwrap();
    let deadline = std::time::Instant::now() + microkit::PATIENCE;
    let servers = loop {
        let servers: Vec<u32> = common::descendants(pid)
            .into_iter()
            .filter(|(_, cmdline)| cmdline.contains("nats-server") && !cmdline.starts_with("sh "))
            .map(|(pid, _)| pid)
            .collect();
        if !servers.is_empty() {
            break servers;
        }
        assert!(std::time::Instant::now() < deadline, "round-robin started no nats-server");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    child.kill().await.unwrap(); // SIGKILL
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while servers.iter().any(|&server| common::alive(server)) {
        assert!(
            std::time::Instant::now() < deadline,
            "nats-server {servers:?} outlived the example that started it"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
