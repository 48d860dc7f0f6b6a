//! Does nothing and succeeds at once with a tiny output: no HTTP, no log, no
//! next tasks. `sluice bench` (W6) runs it to measure what a plugin attempt
//! costs by itself: a fresh store, instantiation, the call, and the drop.
//!
//! Input: anything (ignored). Output: `{"ok": true}`.

use serde::Serialize;
use serde::de::IgnoredAny;
use sluice_sdk::{Context, Outcome};

#[derive(Serialize)]
struct Output {
    ok: bool,
}

async fn run(_ctx: Context, _input: IgnoredAny) -> Outcome<Output> {
    Outcome::Success(Output { ok: true })
}

sluice_sdk::export!(run);
