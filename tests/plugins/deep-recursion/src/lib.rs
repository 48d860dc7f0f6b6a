//! Recurses without end, each frame holding 256 bytes, until a stack runs
//! out: the guest's own stack in linear memory, or wasmtime's limit on the
//! native stack. Either way it must trap cleanly, failing that attempt only.

use sluice_sdk::{Context, Error};

#[inline(never)]
fn descend(depth: u64, parent: &[u8; 256]) -> u64 {
    // Never true; it keeps the compiler from calling this unconditional recursion.
    if depth == u64::MAX {
        return 0;
    }
    let mut frame = *parent;
    frame[(depth % 256) as usize] = depth as u8;
    let frame = std::hint::black_box(frame);
    descend(depth + 1, &frame).wrapping_add(u64::from(frame[0]))
}

async fn run(_ctx: Context, _input: serde_json::Value) -> Result<u64, Error> {
    Ok(descend(0, &[0; 256]))
}

sluice_sdk::export!(run);
