//! The notes stay true to the code: each note quotes its example's exact output, and every
//! relative link in the notes and the README points at a file that exists (and a line
//! anchor at a line that exists).

mod common;

use std::path::{Path, PathBuf};

use common::{root, topics};

#[test]
fn each_note_quotes_the_output_its_golden_file_holds() {
    let mut stale = Vec::new();
    for topic in topics() {
        let (Ok(note), Ok(golden)) = (
            std::fs::read_to_string(root().join("notes").join(format!("{topic}.md"))),
            std::fs::read_to_string(microkit::golden::dir().join(format!("{topic}.txt"))),
        ) else {
            continue; // tests/examples.rs reports a missing note or golden file
        };
        if !note.contains(&format!("```text\n{golden}```")) {
            stale.push(topic);
        }
    }
    assert!(
        stale.is_empty(),
        "these notes do not quote their example's output (tests/golden/<topic>.txt) \
         verbatim in a ```text block: {stale:?}"
    );
}

#[test]
fn every_relative_link_points_at_something_that_exists() {
    let mut documents: Vec<PathBuf> = vec![root().join("README.md")];
    for entry in std::fs::read_dir(root().join("notes")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            documents.push(path);
        }
    }
    let mut broken = Vec::new();
    for document in &documents {
        let text = std::fs::read_to_string(document).unwrap();
        for target in link_targets(&text) {
            if let Err(why) = check(document, &target) {
                broken.push(format!("{}: {target}: {why}", document.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// The targets of `[text](target)` links, outside code blocks.
fn link_targets(markdown: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut in_code = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let mut rest = line;
        while let Some(start) = rest.find("](") {
            rest = &rest[start + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            targets.push(rest[..end].to_owned());
            rest = &rest[end..];
        }
    }
    targets
}

fn check(document: &Path, target: &str) -> Result<(), String> {
    if target.contains("://") || target.starts_with("mailto:") || target.starts_with('#') {
        return Ok(()); // external, or a heading on the same page
    }
    let (path, anchor) = target.split_once('#').unwrap_or((target, ""));
    let file = document.parent().unwrap().join(path);
    if !file.exists() {
        return Err("no such file".into());
    }
    // Heading anchors in Markdown: #the-idea, as the common code hosts make them.
    if !anchor.is_empty() && path.ends_with(".md") {
        let text = std::fs::read_to_string(&file).map_err(|e| e.to_string())?;
        let known: Vec<String> = text
            .lines()
            .filter(|line| line.starts_with('#'))
            .map(|line| slug(line.trim_start_matches('#')))
            .collect();
        if !known.iter().any(|s| s == anchor) {
            return Err(format!("no heading makes the anchor #{anchor}"));
        }
        return Ok(());
    }
    // Line anchors: #L12 or #L12-L20.
    if let Some(lines) = anchor.strip_prefix('L') {
        let last: usize = lines
            .split("-L")
            .last()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("unreadable line anchor #{anchor}"))?;
        let count = std::fs::read_to_string(&file).map_err(|e| e.to_string())?.lines().count();
        if last == 0 || last > count {
            return Err(format!("line {last} is past the end ({count} lines)"));
        }
    }
    Ok(())
}

/// A heading's anchor: lower case, spaces to hyphens, punctuation dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn the_article_links_every_topic_note() {
    let article = std::fs::read_to_string(root().join("notes/README.md")).unwrap();
    let missing: Vec<String> =
        topics().into_iter().filter(|t| !article.contains(&format!("]({t}.md)"))).collect();
    assert!(missing.is_empty(), "notes/README.md does not link these notes: {missing:?}");
}
