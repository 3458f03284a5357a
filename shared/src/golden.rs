//! Golden files: the exact stdout each example must print, in `tests/golden/<topic>.txt`.
//!
//! A mismatch fails the test and shows both texts. Run with `BLESS=1` to rewrite the
//! golden file on purpose, then review the diff before committing it.

use std::path::PathBuf;

/// The folder of golden files, at the workspace root.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the shared crate lives inside the workspace")
        .join("tests/golden")
}

/// Compares `actual` with the golden file of `topic` (or rewrites it under `BLESS=1`).
///
/// # Panics
/// When they differ, or the golden file is missing: this is a test assertion.
pub fn assert_matches(topic: &str, actual: &str) {
    let path = dir().join(format!("{topic}.txt"));
    if std::env::var_os("BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, actual).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("no golden file {} ({e}); run with BLESS=1 to create it", path.display())
    });
    if expected != actual {
        panic!(
            "stdout of `{topic}` differs from {}\n--- expected\n{expected}--- actual\n{actual}---\n\
             (if the change is intended, rerun with BLESS=1 and review the diff)",
            path.display()
        );
    }
}
