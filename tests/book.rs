//! The book (`scripts/book.sh`, in target/book/) as a reader sees it: headless Chromium opens
//! every page of both languages from the files, as a reader who opens
//! target/book/en/index.html does, and each page must have
//!
//! - no console error, uncaught exception or resource that failed to load;
//! - every diagram of its note drawn as an SVG (none missing, none Mermaid's error picture);
//! - every link leading to something that exists: a page of the book and the heading it
//!   names, or a repository file (`../examples/...` in a note);
//! - a language switch to the same page of the other book.
//!
//! A search for a Chinese word finds the Chinese pages that hold it, and an English word the
//! English ones. The test never skips: without a built book it fails and says how to build
//! it (scripts/test.sh builds it first).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::browser::Browser;

const LIMIT: Duration = Duration::from_secs(240);
const LANGS: [(&str, &str); 2] = [("en", "notes"), ("zh", "notes/zh")];

/// What a page tells once its scripts have run and its diagrams are drawn.
const PAGE: &str = r#"(async () => {
    if (location.href !== TARGET || document.readyState !== 'complete') throw 'not yet';
    await window.bookDiagrams;
    const diagrams = [...document.querySelectorAll('pre.mermaid')];
    const switcher = document.getElementById('book-language');
    return {
        diagrams: diagrams.length,
        drawn: diagrams.filter(d => {
            const svg = d.querySelector('svg');
            return svg && svg.getAttribute('aria-roledescription') !== 'error';
        }).length,
        links: [...document.querySelectorAll('a[href]')].map(a => a.href),
        ids: [...document.querySelectorAll('[id]')].map(e => e.id),
        language: switcher ? switcher.href : null,
    };
})()"#;

/// The results a search shows, once it shows some (or after five seconds, none).
const SEARCH: &str = r#"(async () => {
    if (!location.pathname.endsWith(BOOK + '/index.html')
        || new URLSearchParams(location.search).get('search') !== QUERY
        || document.readyState !== 'complete') throw 'not yet';
    for (let i = 0; i < 100; i++) {
        const found = [...document.querySelectorAll('#mdbook-searchresults li a')];
        if (found.length > 0) return { links: found.map(a => a.href) };
        await new Promise(r => setTimeout(r, 50));
    }
    const header = document.getElementById('mdbook-searchresults-header');
    return { links: [], header: header && header.textContent, address: location.href };
})()"#;

fn book() -> PathBuf {
    common::root().join("target/book")
}

/// The pages each book must have: one per note, the article as index.html.
fn pages(notes: &str) -> Vec<(String, PathBuf)> {
    let mut pages: Vec<(String, PathBuf)> = std::fs::read_dir(common::root().join(notes))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .map(|p| {
            let stem = p.file_stem().unwrap().to_str().unwrap().to_owned();
            let page = if stem == "README" { "index".to_owned() } else { stem };
            (format!("{page}.html"), p)
        })
        .collect();
    pages.sort();
    pages
}

fn file_url(path: &Path) -> String {
    format!("file://{}", path.display())
}

/// The file a `file://` URL names, without its query and fragment, and the fragment.
fn file_of(url: &str) -> Option<(PathBuf, Option<String>)> {
    let rest = url.strip_prefix("file://")?;
    let (rest, fragment) = match rest.split_once('#') {
        Some((rest, f)) => (rest, Some(f.to_owned()).filter(|f| !f.is_empty())),
        None => (rest, None),
    };
    let path = rest.split('?').next().unwrap();
    Some((PathBuf::from(percent_decoded(path)), fragment.map(|f| percent_decoded(&f))))
}

fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = text.get(i + 1..i + 3)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn diagrams_in(note: &Path) -> usize {
    let text = std::fs::read_to_string(note).unwrap();
    text.lines().filter(|l| l.trim() == "```mermaid").count()
}

/// Fails, never skips, when the book was not built, or was built before a note last changed.
fn built_book() -> PathBuf {
    let book = book();
    let index = book.join("en/index.html");
    let built = std::fs::metadata(&index)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| panic!("no book at {}: run scripts/book.sh first", book.display()));
    for (_, notes) in LANGS {
        for (_, note) in pages(notes) {
            let changed = std::fs::metadata(&note).unwrap().modified().unwrap();
            assert!(
                changed <= built,
                "{} changed after the book was built: run scripts/book.sh again",
                note.display()
            );
        }
    }
    book
}

#[tokio::test]
async fn every_page_of_both_books_renders_links_and_switches_language() {
    tokio::time::timeout(LIMIT, every_page()).await.expect("the book check timed out");
}

async fn every_page() {
    let book = built_book();
    let started = Instant::now();
    let mut browser = Browser::open("about:blank").await;
    browser.watch_errors().await;

    let mut ids: BTreeMap<PathBuf, BTreeSet<String>> = BTreeMap::new();
    let mut links: Vec<(String, String)> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    let mut visited = 0;
    let mut diagrams = 0;
    for (lang, notes) in LANGS {
        let other = if lang == "en" { "zh" } else { "en" };
        for (page, note) in pages(notes) {
            let path = book.join(lang).join(&page);
            let url = file_url(&path);
            assert!(
                path.exists(),
                "{lang}/{page} is missing: the book has no page for {}",
                note.display()
            );
            browser.navigate(&url).await;
            let script = PAGE.replace("TARGET", &serde_json::to_string(&url).unwrap());
            let seen = browser
                .evaluate(&script, 200)
                .await
                .unwrap_or_else(|| panic!("{lang}/{page} did not finish loading"));
            // One more round trip, so that whatever the page logged is read before moving on.
            browser.evaluate("1", 10).await;
            let name = format!("{lang}/{page}");
            for error in browser.take_errors() {
                problems.push(format!("{name}: {error}"));
            }
            let expected = diagrams_in(&note);
            let (found, drawn) = (
                seen["diagrams"].as_u64().unwrap() as usize,
                seen["drawn"].as_u64().unwrap() as usize,
            );
            if found != expected || drawn != expected {
                problems.push(format!(
                    "{name}: {expected} diagram(s) in {}, {found} in the page, {drawn} drawn as an SVG",
                    note.display()
                ));
            }
            diagrams += drawn;
            let switch = seen["language"].as_str().map(str::to_owned);
            let same_page = file_url(&book.join(other).join(&page));
            if switch.as_deref() != Some(&same_page) {
                problems.push(format!(
                    "{name}: the language switch leads to {switch:?}, not {same_page}"
                ));
            }
            ids.insert(
                path.clone(),
                seen["ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| i.as_str().unwrap().to_owned())
                    .collect(),
            );
            for link in seen["links"].as_array().unwrap() {
                links.push((name.clone(), link.as_str().unwrap().to_owned()));
            }
            visited += 1;
        }
    }

    // Every link, once every page's headings are known.
    let mut checked = BTreeSet::new();
    for (page, link) in &links {
        if link.starts_with("http://") || link.starts_with("https://") {
            continue; // outside this machine: not checked here
        }
        let Some((path, fragment)) = file_of(link) else {
            problems.push(format!("{page}: a link that is neither a file nor the web: {link}"));
            continue;
        };
        if !checked.insert(link.clone()) {
            continue;
        }
        if !path.exists() {
            problems.push(format!("{page}: the link {link} leads nowhere"));
        } else if let (Some(fragment), Some(known)) = (&fragment, ids.get(&path))
            && !known.contains(fragment)
        {
            problems.push(format!("{page}: the link {link} names a heading its page lacks"));
        }
    }
    let outside = links
        .iter()
        .filter(|(_, l)| l.starts_with("file://") && !l.contains("/target/book/"))
        .count();
    browser.close().await;
    assert!(problems.is_empty(), "{} problem(s):\n{}", problems.len(), problems.join("\n"));
    assert!(
        diagrams > 0 && outside > 0,
        "the check saw no diagram or no link to a repository file"
    );
    println!(
        "{visited} pages, {diagrams} diagrams, {} links ({outside} to repository files) checked in {:.1?}",
        checked.len(),
        started.elapsed()
    );
}

#[tokio::test]
async fn search_finds_chinese_and_english_words() {
    tokio::time::timeout(LIMIT, search()).await.expect("the search check timed out");
}

async fn search() {
    let book = built_book();
    let mut browser = Browser::open("about:blank").await;
    browser.watch_errors().await;
    // 租约 (lease) and 心跳 (heartbeat) stand in a Chinese sentence with no space around
    // them, which mdBook's own index cannot find.
    for (lang, query, page) in [
        ("zh", "租约", "registry.html"),
        ("zh", "心跳 租约", "registry.html"),
        ("en", "heartbeat", "registry.html"),
    ] {
        let url = format!("{}?search={}", file_url(&book.join(lang).join("index.html")), query);
        browser.navigate(&url).await;
        let script = SEARCH
            .replace("BOOK", &serde_json::to_string(&format!("/{lang}")).unwrap())
            .replace("QUERY", &serde_json::to_string(query).unwrap());
        let found = browser.evaluate(&script, 100).await.expect("the search page did not load");
        let links = found["links"].as_array().unwrap();
        assert!(!links.is_empty(), "{lang}: searching {query:?} found nothing: {found}");
        let found: Vec<String> = links.iter().map(|v| v.as_str().unwrap().to_owned()).collect();
        let pages: BTreeSet<String> = found
            .iter()
            .map(|link| file_of(link).unwrap().0.file_name().unwrap().to_str().unwrap().to_owned())
            .collect();
        assert!(pages.contains(page), "{lang}: searching {query:?} did not find {page}: {pages:?}");
        for link in &found {
            let (path, _) = file_of(link).unwrap();
            assert!(
                path.starts_with(book.join(lang)) && path.exists(),
                "{lang}: a result leads nowhere: {link}"
            );
        }
    }
    let errors = browser.take_errors();
    browser.close().await;
    assert!(errors.is_empty(), "errors while searching: {errors:?}");
}
