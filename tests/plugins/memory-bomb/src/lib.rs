//! Allocates and fills 1 MiB after 1 MiB, keeping all of it, until memory runs
//! out, logging how much it holds every 8 MiB. Under the plugin's memory (64
//! MiB unless its upload asked for more) `memory.grow` fails, the allocator
//! aborts, and the guest traps: that attempt fails, nothing else does, and
//! the host's own memory stays bounded.

use sluice_sdk::{Context, Error, info};

const CHUNK_BYTES: usize = 1 << 20;

async fn run(_ctx: Context, _input: serde_json::Value) -> Result<(), Error> {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        // Filled, so that every page is really touched.
        hoard.push(std::hint::black_box(vec![0xA5; CHUNK_BYTES]));
        if hoard.len() % 8 == 0 {
            info!("holding {} MiB", hoard.len());
        }
    }
}

sluice_sdk::export!(run);
