//! The exercises (`exercises/<topic>/`, written by `scripts/exercises.py`): the committed
//! files are what the script writes now; every topic has one; each builds, fails while
//! unsolved and passes solved; and putting its regions back gives the example byte for byte,
//! so the solution is the example and cannot drift from it.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{example, root, run_within, takes_backend, text, topics};

/// A run of an unsolved exercise may wait out its deadlines (waitgroup's drain, the
/// 10 s patience of a wait that never ends): well over those, well under a hang.
const LIMIT: Duration = Duration::from_secs(60);

const BEGINS: &str = "// exercise begins: ";
const ENDS: &str = "// exercise ends";
const PLACEHOLDER: &str = "// EXERCISE: ";
const PLACEHOLDER_ENDS: &str = "// END OF EXERCISE";

/// Every file under `dir`, by its path relative to `dir`, with its bytes.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, files: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(base, &path, files);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                files.insert(path.strip_prefix(base).unwrap().to_path_buf(), bytes);
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(dir, dir, &mut files);
    files
}

/// The topics of `exercises/exercises.txt`, in its (the article's reading) order.
fn listed() -> Vec<String> {
    let list = std::fs::read_to_string(root().join("exercises/exercises.txt")).unwrap();
    list.lines()
        .filter(|line| !line.starts_with('#') && !line.starts_with('\t'))
        .map(|line| line.split('\t').next().unwrap().to_owned())
        .collect()
}

/// The blocks of `text` from a line containing `begin` to the next containing `end`,
/// both included, as line ranges.
fn blocks(text: &str, begin: &str, end: &str) -> Vec<(usize, usize)> {
    let lines: Vec<&str> = text.split('\n').collect();
    let mut found = Vec::new();
    let mut start = None;
    for (i, line) in lines.iter().enumerate() {
        match start {
            None if line.trim_start().starts_with(begin) => start = Some(i),
            Some(s) if line.trim() == end => {
                found.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    assert!(start.is_none(), "a block opened by {begin:?} is never closed");
    found
}

#[test]
fn the_committed_exercises_are_what_the_script_writes() {
    let fresh = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("python3")
        .arg(root().join("scripts/exercises.py"))
        .arg("--out")
        .arg(fresh.path())
        .status()
        .expect("running python3 scripts/exercises.py (python3 is needed)");
    assert!(status.success(), "scripts/exercises.py failed");
    let committed = tree(&root().join("exercises"));
    let fresh = tree(fresh.path());
    let names = |t: &BTreeMap<PathBuf, Vec<u8>>| t.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(&committed),
        names(&fresh),
        "exercises/ holds other files than scripts/exercises.py writes: run it"
    );
    for (path, bytes) in &fresh {
        assert!(
            committed[path] == *bytes,
            "exercises/{} differs from what scripts/exercises.py writes now: run it",
            path.display()
        );
    }
}

#[test]
fn every_topic_has_an_exercise_in_reading_order() {
    let mut sorted = listed();
    sorted.sort();
    assert_eq!(sorted, topics(), "exercises/exercises.txt and the topics disagree");
    let article = std::fs::read_to_string(root().join("notes/README.md")).unwrap();
    let order: Vec<usize> = listed()
        .iter()
        .map(|t| article.find(&format!("]({t}.md)")).expect("the article links every topic"))
        .collect();
    assert!(order.is_sorted(), "exercises/exercises.txt is not in the article's order");
    for topic in topics() {
        let regions: usize = tree(&root().join("examples").join(&topic))
            .values()
            .map(|bytes| blocks(&String::from_utf8_lossy(bytes), BEGINS, ENDS).len())
            .sum();
        assert!((1..=2).contains(&regions), "{topic}: {regions} regions, not one or two");
        let hint = root().join("exercises").join(&topic).join("hint.txt");
        assert!(std::fs::read_to_string(hint).is_ok_and(|h| h.len() > 40), "{topic}: no hint");
        // The note ends with its exercise, in both languages, naming the command.
        for (note, heading) in [("notes", "## Exercise"), ("notes/zh", "## 练习")] {
            let text = std::fs::read_to_string(root().join(note).join(format!("{topic}.md")))
                .unwrap_or_default();
            let last = text.rsplit("\n## ").next().unwrap_or_default();
            assert!(
                text.contains(&format!("\n{heading}\n"))
                    && last.starts_with(&heading[3..])
                    && last.contains(&format!("scripts/exercise.sh {topic}")),
                "{note}/{topic}.md does not end with its exercise (`{heading}`)"
            );
        }
        let articles = ["notes/README.md", "notes/zh/README.md"]
            .map(|a| std::fs::read_to_string(root().join(a)).unwrap());
        for article in &articles {
            assert!(
                article.contains(&format!("**{topic}**")),
                "the articles' exercises miss {topic}"
            );
        }
    }
}

/// The exercise with each placeholder replaced by the example's region, in order, is the
/// example: every source file byte for byte. Only the manifest differs (the package's name),
/// and the hint is the exercise's own.
#[test]
fn putting_the_regions_back_gives_the_example_byte_for_byte() {
    for topic in topics() {
        let example = tree(&root().join("examples").join(&topic));
        let mut exercise = tree(&root().join("exercises").join(&topic));
        assert!(exercise.remove(Path::new("hint.txt")).is_some(), "{topic}: no hint.txt");
        assert_eq!(
            example.keys().collect::<Vec<_>>(),
            exercise.keys().collect::<Vec<_>>(),
            "{topic}: the exercise has other files than the example"
        );
        let mut replaced = 0;
        for (path, original) in &example {
            if path == Path::new("Cargo.toml") {
                continue;
            }
            let original = String::from_utf8_lossy(original).into_owned();
            let left = String::from_utf8_lossy(&exercise[path]).into_owned();
            let regions = blocks(&original, BEGINS, ENDS);
            let holes = blocks(&left, PLACEHOLDER, PLACEHOLDER_ENDS);
            assert_eq!(regions.len(), holes.len(), "{topic}/{}: regions", path.display());
            let (solution, left): (Vec<&str>, Vec<&str>) =
                (original.split('\n').collect(), left.split('\n').collect());
            let mut restored: Vec<&str> = Vec::new();
            let mut at = 0;
            for ((r0, r1), (h0, h1)) in regions.iter().zip(&holes) {
                restored.extend(&left[at..*h0]);
                restored.extend(&solution[*r0..=*r1]);
                at = h1 + 1;
            }
            restored.extend(&left[at..]);
            assert!(
                restored.join("\n") == original,
                "{topic}/{}: with its regions back, the exercise is not the example",
                path.display()
            );
            if !holes.is_empty() {
                assert_ne!(left.join("\n"), original, "{topic}: the region was left in");
            }
            replaced += holes.len();
        }
        assert!(replaced > 0, "{topic}: nothing left out");
    }
}

/// Each exercise builds; unsolved, its run differs from the golden (its check fails, with
/// output a learner can read); solved, the example's run, it equals the golden.
#[tokio::test]
async fn each_exercise_builds_fails_unsolved_and_passes_solved() {
    // Over the same packages as `cargo build --examples` plus the exercises (the workspace but
    // its benches), so the features of the dependencies, and their builds, are the examples'.
    let features: Vec<String> = topics().iter().map(|t| format!("exercise-{t}/exercise")).collect();
    let status = common::cargo()
        .args(["build", "--quiet", "--workspace", "--exclude", "micro-benches", "--examples"])
        .args(["--features", &features.join(",")])
        .status()
        .expect("running cargo build for the exercises");
    assert!(status.success(), "an exercise does not build");
    let examples =
        std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("examples");

    // One at a time: the examples keep real timings (leases, heartbeats), which a machine
    // running 44 of them at once could stretch past their bounds.
    let mut failures = Vec::new();
    for topic in topics() {
        let args: &[&str] = if takes_backend(&topic) { &["--backend", "memory"] } else { &[] };
        let golden = common::golden::dir().join(format!("{topic}.txt"));
        let golden = std::fs::read_to_string(golden).unwrap();

        // The exercise's binary, run as `example` runs the topic's: a clean environment.
        let mut command = std::process::Command::new(examples.join(format!("exercise-{topic}")));
        command
            .args(args)
            .env_remove("NATS_URL")
            .env_remove("MICRO_BACKEND")
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut unsolved = tokio::process::Command::from(command);
        unsolved.kill_on_drop(true);
        let unsolved = run_within(unsolved, LIMIT).await;

        let mut solved = example(&topic);
        solved.args(args);
        let solved = run_within(solved, LIMIT).await;

        if text(&unsolved.stdout) == golden {
            failures.push(format!("{topic}: unsolved, it still prints the golden output"));
        }
        if !solved.status.success() || text(&solved.stdout) != golden {
            failures.push(format!("{topic}: solved (the example), it fails its check"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
