//! The notes stay true to the code: each note quotes its example's exact output and shows
//! code its example really holds; every relative link in the notes (the Chinese article and
//! the glossary included) and the README points at a file that exists (and a heading or a
//! line that exists); both articles cover every topic, and the Chinese questions table has a
//! row for every row of the English one. The Chinese edition (`notes/zh/`) has a twin of every
//! note that follows the English as it is now, shows the same code and output, and keeps the
//! glossary's fixed renderings.

mod common;

use std::path::{Path, PathBuf};

use common::{root, topics};

#[test]
fn each_note_quotes_the_output_its_golden_file_holds() {
    let mut stale = Vec::new();
    for topic in topics() {
        let (Ok(note), Ok(golden)) = (
            std::fs::read_to_string(root().join("notes").join(format!("{topic}.md"))),
            std::fs::read_to_string(common::golden::dir().join(format!("{topic}.txt"))),
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
    markdown_files(&root().join("notes"), &mut documents);
    for required in ["notes/glossary.md", "notes/zh/README.md"] {
        assert!(documents.contains(&root().join(required)), "{required} is missing");
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

/// Every `.md` file under `dir`, subfolders included (`notes/zh/`).
fn markdown_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            markdown_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "md") {
            found.push(path);
        }
    }
}

/// The lines of a Markdown text outside its fenced blocks.
fn prose_lines(markdown: &str) -> impl Iterator<Item = &str> {
    let mut in_code = false;
    markdown.lines().filter(move |line| {
        let fence = line.trim_start().starts_with("```");
        if fence {
            in_code = !in_code;
        }
        !fence && !in_code
    })
}

/// The targets of `[text](target)` links, outside code blocks.
fn link_targets(markdown: &str) -> Vec<String> {
    let mut targets = Vec::new();
    for line in prose_lines(markdown) {
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
fn both_articles_link_every_topic_note() {
    // Both link the notes of their own language, which sit beside them.
    for article in ["notes/README.md", "notes/zh/README.md"] {
        let text = std::fs::read_to_string(root().join(article)).unwrap();
        // A topic whose note is not written yet is tests/examples.rs's to report.
        let missing: Vec<String> = topics()
            .into_iter()
            .filter(|t| root().join("notes").join(format!("{t}.md")).is_file())
            .filter(|t| !text.contains(&format!("]({t}.md)")))
            .collect();
        assert!(missing.is_empty(), "{article} does not link these notes: {missing:?}");
    }
}

/// The rows of the questions table: the table under the heading that starts with
/// `heading`, each row reduced to the notes it links (`wrapper.md`), in order. Headings are
/// left out (each language has its own), and so are links within the article itself.
fn question_rows(article: &str, heading: &str) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(root().join(article)).unwrap();
    let section = text
        .split("\n## ")
        .find(|s| s.starts_with(heading))
        .unwrap_or_else(|| panic!("{article} has no section \"## {heading}...\""));
    let rows: Vec<&str> = section.lines().filter(|l| l.starts_with('|')).skip(2).collect();
    assert!(!rows.is_empty(), "{article}: no questions table under \"## {heading}\"");
    rows.iter()
        .map(|row| {
            link_targets(row)
                .into_iter()
                .filter(|t| t.contains(".md"))
                .map(|t| t.split('#').next().unwrap().to_owned())
                .collect()
        })
        .collect()
}

#[test]
fn the_chinese_questions_table_has_a_row_for_every_english_question() {
    let english = question_rows("notes/README.md", "Every question");
    let chinese = question_rows("notes/zh/README.md", "每个问题");
    for (n, row) in english.iter().enumerate() {
        assert_eq!(
            chinese.get(n),
            Some(row),
            "question {} of notes/README.md's table links {row:?}; row {} of \
             notes/zh/README.md's table should link the same sections",
            n + 1,
            n + 1
        );
    }
    assert_eq!(chinese.len(), english.len(), "the Chinese table has rows the English one lacks");
}

/// The `rust` blocks of a note.
fn rust_excerpts(note: &str) -> Vec<Vec<&str>> {
    let mut excerpts = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in note.lines() {
        match (&mut current, line.trim()) {
            (None, "```rust") => current = Some(Vec::new()),
            (Some(_), "```") => excerpts.push(current.take().unwrap()),
            (Some(lines), _) => lines.push(line),
            (None, _) => {}
        }
    }
    excerpts
}

/// An excerpt's line that stands for lines left out; it is not looked for in the code.
const ELISION: &str = "// ...";

/// The Rust files of a topic's example: `examples/<topic>.rs`, or every file of
/// `examples/<topic>/`.
fn example_sources(topic: &str) -> Vec<(PathBuf, String)> {
    let mut files = vec![root().join("examples").join(format!("{topic}.rs"))];
    if let Ok(entries) = std::fs::read_dir(root().join("examples").join(topic)) {
        files.extend(entries.map(|e| e.unwrap().path()));
    }
    files
        .into_iter()
        .filter(|path| path.extension().is_some_and(|e| e == "rs"))
        .filter_map(|path| Some((path.clone(), std::fs::read_to_string(&path).ok()?)))
        .collect()
}

/// Whether `source` holds the excerpt: its lines, indentation aside, in one run, or in
/// several runs in that order where the excerpt has an `// ...` line. The comments that
/// mark an exercise's region (`scripts/exercises.py`) are not part of the lesson's code:
/// an excerpt may run across them.
fn holds(source: &str, excerpt: &[&str]) -> bool {
    let marker =
        |line: &&str| line.starts_with("// exercise begins: ") || *line == "// exercise ends";
    let source: Vec<&str> = source.lines().map(str::trim).filter(|l| !marker(l)).collect();
    let mut from = 0;
    for run in excerpt.split(|line| line.trim() == ELISION) {
        let run: Vec<&str> = run.iter().map(|l| l.trim()).collect();
        if run.is_empty() {
            continue;
        }
        let Some(at) = (from..source.len().saturating_sub(run.len() - 1))
            .find(|&i| source[i..i + run.len()] == run[..])
        else {
            return false;
        };
        from = at + run.len();
    }
    true
}

#[test]
fn every_topic_note_shows_code_its_example_holds() {
    let mut problems = Vec::new();
    for topic in topics() {
        let Ok(note) = std::fs::read_to_string(root().join("notes").join(format!("{topic}.md")))
        else {
            continue; // tests/examples.rs reports a missing note
        };
        let sources = example_sources(&topic);
        let excerpts = rust_excerpts(&note);
        if excerpts.is_empty() {
            problems.push(format!("notes/{topic}.md has no ```rust excerpt of its example"));
        }
        for excerpt in excerpts {
            let first = excerpt.iter().find(|l| !l.trim().is_empty()).copied().unwrap_or("");
            if !(5..=25).contains(&excerpt.len()) {
                problems.push(format!(
                    "notes/{topic}.md: the excerpt starting `{}` has {} lines, not 5 to 25",
                    first.trim(),
                    excerpt.len()
                ));
            }
            if !sources.iter().any(|(_, source)| holds(source, &excerpt)) {
                problems.push(format!(
                    "notes/{topic}.md: the excerpt starting `{}` is not in {:?}",
                    first.trim(),
                    sources
                        .iter()
                        .map(|(p, _)| p.strip_prefix(root()).unwrap())
                        .collect::<Vec<_>>()
                ));
            }
        }
    }
    assert!(problems.is_empty(), "notes and code disagree:\n{}", problems.join("\n"));
}

#[test]
fn excerpts_are_found_across_elisions_and_indentation_only() {
    let source = "fn f() {\n    let a = 1;\n    let b = 2;\n    let c = 3;\n}\n";
    assert!(holds(source, &["let a = 1;", "let b = 2;"]));
    assert!(holds(source, &["        let a = 1;", "// ...", "let c = 3;", "}"]));
    assert!(!holds(source, &["let a = 1;", "let c = 3;"]), "lines must be consecutive");
    assert!(!holds(source, &["let c = 3;", "// ...", "let a = 1;"]), "runs keep their order");
    assert!(!holds(source, &["let a = 2;"]));
    let marked = "let a = 1;\n// exercise begins: b\nlet b = 2;\n// exercise ends\nlet c = 3;\n";
    assert!(holds(marked, &["let a = 1;", "let b = 2;", "let c = 3;"]), "markers are skipped");
}

// ---- the Chinese edition ----

/// How a Chinese note begins: which English note it translates, and that note's sha256 at
/// the revision the translation follows.
fn marker(name: &str, english: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, english);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("<!-- translation of notes/{name}, sha256 {hex} -->")
}

/// The notes of one folder (not its subfolders), by file name, sorted.
fn notes_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "md"))
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn every_note_has_a_chinese_twin_that_follows_the_english_as_it_is_now() {
    let mut problems = Vec::new();
    for name in notes_in(&root().join("notes")) {
        let english = std::fs::read(root().join("notes").join(&name)).unwrap();
        let Ok(chinese) = std::fs::read_to_string(root().join("notes/zh").join(&name)) else {
            problems.push(format!("notes/{name} has no Chinese twin notes/zh/{name}"));
            continue;
        };
        let expected = marker(&name, &english);
        match chinese.lines().next() {
            Some(first) if first == expected => {}
            Some(first) if first.starts_with("<!-- translation of notes/") => {
                problems.push(format!(
                    "notes/{name} changed since notes/zh/{name} was brought in step with it: \
                 translate the change, then make its first line\n  {expected}"
                ))
            }
            _ => problems.push(format!("notes/zh/{name} does not begin with\n  {expected}")),
        }
    }
    for name in notes_in(&root().join("notes/zh")) {
        if !root().join("notes").join(&name).is_file() {
            problems.push(format!("notes/zh/{name} translates no English note"));
        }
    }
    assert!(problems.is_empty(), "the Chinese edition is out of step:\n{}", problems.join("\n"));
}

/// The fenced blocks of a Markdown text (code, quoted output, diagrams), each with its
/// lines' leading indentation removed (a block inside a list item is indented).
fn fenced_blocks(markdown: &str) -> Vec<Vec<&str>> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in markdown.lines() {
        let line = line.trim_start();
        match (&mut current, line.starts_with("```")) {
            (None, true) => current = Some(vec![line]),
            (Some(block), true) => {
                block.push(line);
                blocks.push(current.take().unwrap());
            }
            (Some(block), false) => block.push(line),
            (None, false) => {}
        }
    }
    blocks
}

#[test]
fn a_chinese_note_shows_the_same_code_output_and_diagrams_as_its_english_twin() {
    let mut differ = Vec::new();
    for name in notes_in(&root().join("notes/zh")) {
        let Ok(english) = std::fs::read_to_string(root().join("notes").join(&name)) else {
            continue; // the twin test reports it
        };
        let chinese = std::fs::read_to_string(root().join("notes/zh").join(&name)).unwrap();
        if fenced_blocks(&english) != fenced_blocks(&chinese) {
            differ.push(name);
        }
    }
    assert!(
        differ.is_empty(),
        "these Chinese notes' code blocks, quoted output or diagrams are not byte for byte \
         their English twin's: {differ:?}"
    );
}

/// The glossary's table of fixed renderings (`## 译名表` in `notes/zh/glossary.md`): the
/// renderings every Chinese note uses, and the ones it never uses.
fn renderings() -> (Vec<String>, Vec<String>) {
    let glossary = std::fs::read_to_string(root().join("notes/zh/glossary.md")).unwrap();
    let table = glossary.split("\n## 译名表").nth(1).expect("notes/zh/glossary.md has ## 译名表");
    let is_han = |c: char| ('\u{4e00}'..='\u{9fff}').contains(&c);
    let han_words = |cell: &str| -> Vec<String> {
        cell.split(|c: char| !is_han(c)).filter(|w| !w.is_empty()).map(str::to_owned).collect()
    };
    let (mut fixed, mut never) = (Vec::new(), Vec::new());
    for row in table.lines().filter(|l| l.starts_with('|')).skip(2) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        if let [_, _, rendering, avoided, ..] = cells[..] {
            fixed.extend(han_words(rendering));
            never.extend(han_words(avoided));
        }
    }
    (fixed, never)
}

/// `text` without its fenced blocks and inline code, which quote code, not prose.
fn prose(text: &str) -> String {
    let mut out = String::new();
    let mut in_block = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if !in_block {
            for (i, part) in line.split('`').enumerate() {
                if i % 2 == 0 {
                    out.push_str(part);
                }
            }
            out.push('\n');
        }
    }
    out
}

/// Where `prose` uses `avoided`, except inside a fixed rendering that contains it (链路 is
/// never a tunnel's link, yet 链路追踪 is tracing).
fn misuses(prose: &str, avoided: &str, fixed: &[String]) -> usize {
    prose
        .match_indices(avoided)
        .filter(|(at, _)| {
            !fixed.iter().filter(|f| f.contains(avoided)).any(|f| {
                let offset = f.find(avoided).unwrap();
                at.checked_sub(offset).is_some_and(|start| prose[start..].starts_with(f.as_str()))
            })
        })
        .count()
}

#[test]
fn the_chinese_notes_keep_the_glossarys_fixed_renderings() {
    let (fixed, never) = renderings();
    assert!(!never.is_empty(), "the table of renderings lists no rendering to avoid");
    let mut problems = Vec::new();
    for name in notes_in(&root().join("notes/zh")) {
        let text = std::fs::read_to_string(root().join("notes/zh").join(&name)).unwrap();
        // The table itself names what to avoid.
        let text = text.split("\n## 译名表").next().unwrap();
        let prose = prose(text);
        for avoided in &never {
            let n = misuses(&prose, avoided, &fixed);
            if n > 0 {
                problems.push(format!("notes/zh/{name}: {avoided} ({n}x)"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "renderings the glossary's table (notes/zh/glossary.md, ## 译名表) rules out:\n{}",
        problems.join("\n")
    );
}

#[test]
fn a_fixed_rendering_that_contains_an_avoided_word_is_not_a_misuse() {
    let fixed = vec!["链路追踪".to_owned(), "隧道连接".to_owned()];
    assert_eq!(misuses("两个节点之间的链路断了", "链路", &fixed), 1);
    assert_eq!(misuses("链路追踪把调用串起来", "链路", &fixed), 0);
    assert_eq!(misuses("链路追踪之外，链路还指别的", "链路", &fixed), 1);
}

#[test]
fn the_items_a_note_names_beside_a_rust_file_are_defined_in_that_file() {
    let mut documents = Vec::new();
    markdown_files(&root().join("notes"), &mut documents);
    let mut checked = 0;
    let mut wrong = Vec::new();
    for document in &documents {
        let text = std::fs::read_to_string(document).unwrap();
        for (target, items) in items_beside_rust_links(&text) {
            let file = document.parent().unwrap().join(&target);
            let Ok(source) = std::fs::read_to_string(&file) else {
                continue; // the link test reports a missing file
            };
            for item in items {
                checked += 1;
                let name = item.trim_end_matches("()").rsplit("::").next().unwrap();
                if !defines(&source, name) {
                    wrong.push(format!(
                        "{}: `{item}` is not defined in {target}",
                        document.display()
                    ));
                }
            }
        }
    }
    assert!(checked > 50, "found only {checked} items beside links: is the parser broken?");
    assert!(wrong.is_empty(), "the notes point at the wrong file:\n{}", wrong.join("\n"));
}

/// Each link to a `.rs` file, outside code blocks, with the items named right after it:
/// ``[`x.rs`](../x.rs) `Item`, `Type::method`; ...`` gives `x.rs` and both items. The first
/// item follows the link after one space; later ones after `, `, ` and ` or `、`.
fn items_beside_rust_links(markdown: &str) -> Vec<(String, Vec<String>)> {
    let mut found = Vec::new();
    for line in prose_lines(markdown) {
        let mut rest = line;
        while let Some(start) = rest.find("`](") {
            rest = &rest[start + 3..];
            let end = rest.find(')').unwrap_or(rest.len());
            let target = &rest[..end];
            rest = &rest[end..];
            if !target.ends_with(".rs") {
                continue;
            }
            let mut after = rest.strip_prefix(')').unwrap_or(rest);
            let mut items = Vec::new();
            let mut separators: &[&str] = &[" "];
            while let Some(next) = separators.iter().find_map(|s| after.strip_prefix(s)) {
                let Some(item) = next.strip_prefix('`').and_then(|t| t.split('`').next()) else {
                    break;
                };
                let is_path = !item.is_empty()
                    && item
                        .trim_end_matches("()")
                        .chars()
                        .all(|c| c.is_alphanumeric() || c == '_' || c == ':')
                    && !item.starts_with(|c: char| c.is_ascii_digit());
                if !is_path {
                    break;
                }
                items.push(item.to_owned());
                after = &next[item.len() + 2..];
                separators = &[", ", " and ", "、"];
            }
            if !items.is_empty() {
                found.push((target.to_owned(), items));
            }
        }
    }
    found
}

/// Whether `source` defines `name`: as a function, type, trait, constant, module or macro,
/// or names it in an `impl` header.
fn defines(source: &str, name: &str) -> bool {
    let keywords = [
        "fn ",
        "struct ",
        "enum ",
        "trait ",
        "type ",
        "const ",
        "static ",
        "mod ",
        "impl ",
        "for ",
        "macro_rules! ",
    ];
    keywords.iter().any(|keyword| {
        let pattern = format!("{keyword}{name}");
        source.match_indices(&pattern).any(|(at, _)| {
            let before = source[..at].chars().next_back();
            let after = source[at + pattern.len()..].chars().next();
            !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
                && !after.is_some_and(|c| c.is_alphanumeric() || c == '_')
        })
    })
}

#[test]
fn items_beside_links_are_found_and_checked_against_definitions() {
    let line = "see [`a.rs`](../a.rs) `Foo::bar`, `baz` and `Qux`; [`b.rs`](b.rs), `NOT` here; \
                [`c.md`](c.md) `skip`; [`d.rs`](d.rs) (`nope`)";
    assert_eq!(
        items_beside_rust_links(line),
        [("../a.rs".to_owned(), vec!["Foo::bar".to_owned(), "baz".to_owned(), "Qux".to_owned()])]
    );
    let source = "pub struct Foo;\nimpl Foo { pub async fn bar() {} }\nimpl Display for Qux {}";
    assert!(defines(source, "bar") && defines(source, "Foo") && defines(source, "Qux"));
    assert!(!defines(source, "ba") && !defines(source, "Display2") && !defines(source, "baz"));
}
