//! Reads a file with `std::fs`, so the component imports `wasi:filesystem`.
//! The host admits the import (language runtimes carry it) but links it
//! inert: no directory is preopened, so the read fails and the task fails
//! with `reading a file`.

use sluice_sdk::{Context, Error, ResultExt};

async fn run(_ctx: Context, path: Option<String>) -> Result<String, Error> {
    let path = path.unwrap_or_else(|| "/etc/passwd".to_string());
    std::fs::read_to_string(&path).or_fail("reading a file")
}

sluice_sdk::export!(run);
