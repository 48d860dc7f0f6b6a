//! Ends with far more text than the host keeps: 16 MiB by default. The host
//! must cap what it stores (and say so), not keep it all or fall over.
//!
//! Input (optional): `{"bytes": 16777216, "into": "output"}`, where `into` is
//! which part of the outcome is huge: `output` (a success's output),
//! `fail` (a failure's reason), `retry` (a retry's reason) or `next` (a
//! success asking for `bytes / 64` next tasks).

use serde::Deserialize;
use serde_json::json;
use sluice_sdk::{Context, Outcome};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[serde(default = "bytes_default")]
    bytes: usize,
    #[serde(default)]
    into: Part,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "lowercase")]
enum Part {
    #[default]
    Output,
    Fail,
    Retry,
    Next,
}

fn bytes_default() -> usize {
    16 << 20
}

async fn run(ctx: Context, input: Option<Input>) -> Outcome<String> {
    let input = input.unwrap_or(Input {
        bytes: bytes_default(),
        into: Part::Output,
    });
    let huge = || "x".repeat(input.bytes);
    match input.into {
        Part::Output => Outcome::Success(huge()),
        Part::Fail => Outcome::Fail(huge()),
        Part::Retry => Outcome::Retry {
            after: None,
            reason: huge(),
        },
        Part::Next => {
            for n in 0..input.bytes / 64 {
                ctx.add_next(json!({ "gate": "flood", "webhook": { "url": format!("http://flood.invalid/{n}") } }));
            }
            Outcome::Success(String::new())
        }
    }
}

sluice_sdk::export!(run);
