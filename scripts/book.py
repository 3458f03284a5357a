#!/usr/bin/env python3
"""Lays out notes/ as the sources of two mdBooks and builds them (called by scripts/book.sh).

  target/book-src/<lang>/   book.toml, src/ (SUMMARY.md and the notes, rewritten), theme
  target/book/<lang>/       the HTML: en from notes/, zh from notes/zh/

What the copy changes, and nothing else:
  - a ```mermaid block becomes <pre class="mermaid" data-diagram="...">, which book.js and
    mermaid.min.js (from the npm registry, pinned in scripts/book.sh) turn into an SVG in the
    browser (the source kept out of the search index);
  - a link that leaves the notes (../examples/..., ../tests/..., ../README.md) points at the
    repository file through a relative path that holds while the book stays in target/book/;
  - a link to a note of the other language points at that book's page;
  - README.md, the article, is the book's first page (index.html).
SUMMARY.md lists the topics in the article's reading order (notes/README.md).
"""

import argparse
import html
import json
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
LANGS = {
    "en": {"dir": "notes", "title": "go-micro's lessons, in Rust"},
    "zh": {"dir": "notes/zh", "title": "用 Rust 学 go-micro 的思路"},
}
# From a page, target/book/<lang>/<page>.html, back to the repository's root.
TO_ROOT = "../../../"
LINK = re.compile(r"\]\(([^)\s]+)\)")


def reading_order():
    """The notes in the article's order: its numbered topics, then the rest it links to."""
    article = open(os.path.join(ROOT, "notes/README.md"), encoding="utf-8").read()
    order = []
    for name in re.findall(r"\*\*\[[^\]]+\]\(([a-z0-9-]+)\.md\)\*\*", article):
        if name not in order:
            order.append(name)
    for name in re.findall(r"\]\(([a-z0-9-]+)\.md[)#]", article):
        if name not in order and name != "README":
            order.append(name)
    present = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "notes")) if f.endswith(".md"))
    missing = [n for n in present if n not in order and n != "README"]
    if missing:
        sys.exit(f"book: notes/README.md does not link these notes, so the book has no place for them: {missing}")
    return order


def page_name(path):
    """notes/x.md -> x.md; README.md -> index.md (the book's first page)."""
    name = os.path.basename(path)
    return "index.md" if name == "README.md" else name


def rewrite_target(target, source_dir, lang):
    """Where a link of a note in `source_dir` (relative to the repository) leads in the book."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
        return target
    path, hash_, fragment = target.partition("#")
    suffix = hash_ + fragment
    slash = "/" if path.endswith("/") else ""
    repo_path = os.path.normpath(os.path.join(source_dir, path))
    if repo_path.startswith(".."):
        sys.exit(f"book: {source_dir}: a link leaves the repository: {target}")
    for other, info in LANGS.items():
        if os.path.dirname(repo_path) == info["dir"] and repo_path.endswith(".md"):
            name = page_name(repo_path)
            if other == lang:
                return name + suffix
            return f"../{other}/{name[:-3]}.html{suffix}"
    return TO_ROOT + repo_path + slash + suffix


def rewrite_line(line, source_dir, lang):
    # Backticks delimit inline code, where a `](...)` is text, not a link.
    parts = line.split("`")
    for i in range(0, len(parts), 2):
        parts[i] = LINK.sub(lambda m: "](" + rewrite_target(m.group(1), source_dir, lang) + ")", parts[i])
    return "`".join(parts)


def convert(text, source_dir, lang):
    out, fence, diagram = [], None, None
    for line in text.split("\n"):
        stripped = line.strip()
        if diagram is not None:
            if stripped == "```":
                # The source rides in an attribute, where mdBook's search index does not
                # look; book.js hands it to Mermaid.
                source = html.escape("\n".join(diagram), quote=True)
                out.append(f'<pre class="mermaid" data-diagram="{source}"></pre>')
                diagram = None
            else:
                diagram.append(line)
            continue
        if fence is None and stripped == "```mermaid":
            diagram = []
            continue
        if stripped.startswith("```"):
            if fence is None:
                fence = stripped
            elif stripped == "```":
                fence = None
            out.append(line)
            continue
        out.append(line if fence else rewrite_line(line, source_dir, lang))
    if diagram is not None or fence is not None:
        sys.exit(f"book: {source_dir}: a code block is not closed")
    return "\n".join(out)


def first_heading(text):
    match = re.search(r"^# (.+)$", text, re.M)
    return match.group(1).strip() if match else None


def layout(lang, order, build, assets):
    info = LANGS[lang]
    src = os.path.join(build, lang, "src")
    shutil.rmtree(os.path.join(build, lang), ignore_errors=True)
    os.makedirs(src)
    summary = ["# Summary", ""]
    for note in ["README"] + order:
        rel = f"{info['dir']}/{note}.md"
        text = open(os.path.join(ROOT, rel), encoding="utf-8").read()
        # The Chinese twin's first line records the English revision: not for readers.
        text = re.sub(r"\A<!-- translation of [^\n]*-->\n", "", text)
        page = page_name(rel)
        with open(os.path.join(src, page), "w", encoding="utf-8") as f:
            f.write(convert(text, info["dir"], lang))
        title = first_heading(text) or note
        summary.append(f"[{title}]({page})" if note == "README" else f"- [{title}]({page})")
    with open(os.path.join(src, "SUMMARY.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(summary) + "\n")
    # mdBook copies what it adds to every page only from inside the book's folder.
    os.makedirs(os.path.join(build, lang, "assets"))
    named = []
    for asset in assets:
        name = "mermaid.min.js" if asset.endswith("mermaid.min.js") or "mermaid-" in asset else os.path.basename(asset)
        shutil.copy(asset, os.path.join(build, lang, "assets", name))
        named.append("assets/" + name)
    js = [a for a in named if a.endswith(".js")]
    css = [a for a in named if a.endswith(".css")]
    with open(os.path.join(build, lang, "book.toml"), "w", encoding="utf-8") as f:
        f.write(
            f"""[book]
title = {json.dumps(info['title'], ensure_ascii=False)}
language = "{lang}"
src = "src"

[build]
build-dir = {json.dumps(os.path.relpath(os.path.join(ROOT, 'target/book', lang), os.path.join(build, lang)))}
create-missing = false

[output.html]
additional-js = {json.dumps(js)}
additional-css = {json.dumps(css)}
no-section-label = true

[output.html.print]
enable = false

# The excerpts need the workspace's crates: the playground cannot run them (and a page
# read offline would fail to reach it).
[output.html.playground]
runnable = false

[output.html.search]
enable = true
"""
        )


def fix_outside_links(book_dir):
    """mdBook turns every relative `x.md` link into `x.html`; a link to a repository file
    such as ../README.md must stay `.md`."""
    outside = re.compile(r'href="(' + re.escape(TO_ROOT) + r'[^"#?]*?)\.html([#?][^"]*)?"')
    for name in os.listdir(book_dir):
        if not name.endswith(".html"):
            continue
        path = os.path.join(book_dir, name)
        page = open(path, encoding="utf-8").read()

        def back(m):
            target = os.path.normpath(os.path.join(book_dir, m.group(1) + ".md"))
            if os.path.exists(target):
                return f'href="{m.group(1)}.md{m.group(2) or ""}"'
            return m.group(0)

        fixed = outside.sub(back, page)
        if fixed != page:
            with open(path, "w", encoding="utf-8") as f:
                f.write(fixed)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mdbook", required=True)
    parser.add_argument("--mermaid", required=True, help="mermaid.min.js")
    args = parser.parse_args()
    build = os.path.join(ROOT, "target/book-src")
    assets = [
        os.path.abspath(args.mermaid),
        os.path.join(ROOT, "scripts/book/book.js"),
        os.path.join(ROOT, "scripts/book/book.css"),
    ]
    order = reading_order()
    shutil.rmtree(os.path.join(ROOT, "target/book"), ignore_errors=True)
    for lang in LANGS:
        layout(lang, order, build, assets)
        # Warnings and errors only, not mdBook's progress lines.
        quiet = dict(os.environ, MDBOOK_LOG=os.environ.get("MDBOOK_LOG", "warn"))
        subprocess.run([args.mdbook, "build", os.path.join(build, lang)], check=True, env=quiet)
        fix_outside_links(os.path.join(ROOT, "target/book", lang))
    with open(os.path.join(ROOT, "target/book/index.html"), "w", encoding="utf-8") as f:
        f.write(
            '<!DOCTYPE html>\n<meta charset="utf-8">\n<title>go-micro\'s lessons, in Rust</title>\n'
            '<meta http-equiv="refresh" content="0; url=en/index.html">\n'
            '<p><a href="en/index.html">English</a> · <a href="zh/index.html">中文</a></p>\n'
        )
    print(f"book: {len(order) + 1} pages in each language, target/book/en/index.html and target/book/zh/index.html")


if __name__ == "__main__":
    main()
