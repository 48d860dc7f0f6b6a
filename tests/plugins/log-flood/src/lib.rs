//! Logs far past any cap: `lines` lines of `line_bytes` each (by default a
//! million lines of 1 KiB), then one line of 16 MiB, then succeeds with what
//! it wrote. The host must keep only its capped share, say how much it
//! dropped, and not slow other tasks down while the flood lasts.
//!
//! Input (optional): `{"lines": 1000000, "line_bytes": 1024}`.

use serde::{Deserialize, Serialize};
use sluice_sdk::{Context, Error, info};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    #[serde(default = "lines_default")]
    lines: u64,
    #[serde(default = "line_bytes_default")]
    line_bytes: usize,
}

fn lines_default() -> u64 {
    1_000_000
}

fn line_bytes_default() -> usize {
    1024
}

#[derive(Serialize)]
struct Output {
    lines: u64,
    bytes: u64,
}

const HUGE_LINE_BYTES: usize = 16 << 20;

async fn run(_ctx: Context, input: Option<Input>) -> Result<Output, Error> {
    let (lines, line_bytes) = input.map_or((lines_default(), line_bytes_default()), |input| {
        (input.lines, input.line_bytes)
    });
    let line = "y".repeat(line_bytes);
    for n in 0..lines {
        info!("{n:>9} {line}");
    }
    info!("{}", "z".repeat(HUGE_LINE_BYTES));
    Ok(Output {
        lines: lines + 1,
        bytes: lines * (line_bytes as u64 + 10) + HUGE_LINE_BYTES as u64,
    })
}

sluice_sdk::export!(run);
