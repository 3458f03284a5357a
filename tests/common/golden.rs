//! Golden files: the exact stdout each example must print, in `tests/golden/<topic>.txt`.
//!
//! A mismatch fails the test and shows both texts. Run with `BLESS=1` to rewrite the
//! golden file on purpose, then review the diff before committing it.

use std::path::PathBuf;

/// The folder of golden files.
pub fn dir() -> PathBuf {
    super::root().join("tests/golden")
}

/// Compares `actual` with the golden file of `topic` (or rewrites it under `BLESS=1`),
/// and says how they differ.
pub fn compare(topic: &str, actual: &str) -> Result<(), String> {
    let path = dir().join(format!("{topic}.txt"));
    if std::env::var_os("BLESS").is_some_and(|v| v == "1") {
        return std::fs::write(&path, actual)
            .map_err(|e| format!("writing {}: {e}", path.display()));
    }
    let expected = std::fs::read_to_string(&path).map_err(|e| {
        format!("no golden file {} ({e}); run with BLESS=1 to create it", path.display())
    })?;
    if expected != actual {
        return Err(format!(
            "stdout of `{topic}` differs from {}\n--- expected\n{expected}--- actual\n{actual}---\n\
             (if the change is intended, rerun with BLESS=1 and review the diff)",
            path.display()
        ));
    }
    Ok(())
}
