//! Reads a file with `std::fs`, so the component imports `wasi:filesystem`,
//! which the `sluice:task` world does not grant. The host must refuse it at
//! upload, naming the import; it is never run.

use sluice_sdk::{Context, Error, ResultExt};

async fn run(_ctx: Context, path: Option<String>) -> Result<String, Error> {
    let path = path.unwrap_or_else(|| "/etc/passwd".to_string());
    std::fs::read_to_string(&path).or_fail("reading a file")
}

sluice_sdk::export!(run);
