//! Opens a TCP connection with `std::net`, so the component imports
//! `wasi:sockets`. The host admits the import (language runtimes carry it)
//! but links it inert: TCP is refused before any socket exists, so the task
//! fails with `connecting`. The only way out is HTTP through the gate.

use std::io::Write;
use std::net::TcpStream;

use sluice_sdk::{Context, Error, ResultExt};

async fn run(_ctx: Context, address: Option<String>) -> Result<(), Error> {
    let address = address.unwrap_or_else(|| "192.0.2.1:25".to_string());
    let mut stream = TcpStream::connect(&address).or_fail("connecting")?;
    stream.write_all(b"HELO sluice\r\n").or_fail("writing")
}

sluice_sdk::export!(run);
