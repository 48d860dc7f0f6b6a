//! Never returns: spins without ever calling the host. Only the host's epoch
//! deadline can stop it (there is no host call to time out); the attempt must
//! end as timed out at the task's timeout, and other tasks must carry on.

use sluice_sdk::{Context, Error};

async fn run(_ctx: Context, _input: serde_json::Value) -> Result<(), Error> {
    let mut spins: u64 = 0;
    loop {
        spins = std::hint::black_box(spins.wrapping_add(1));
    }
}

sluice_sdk::export!(run);
