//! Printing results: human lines or JSON on stdout, warnings on stderr.

use serde::Serialize;

/// Print one JSON value on its own line.
pub fn json_line<T: Serialize>(value: &T) {
    match serde_json::to_string(value) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("error: cannot encode JSON output: {e}"),
    }
}

/// A short node id for human output: the first 10 hex characters.
pub fn short(id: &str) -> &str {
    &id[..id.len().min(10)]
}
