//! Idle connections for the memory metric: opens `--count` connections, each with a completed handshake and one
//! byte echoed (so the wrapper's backend connection exists too), reports them on stdout, and holds them open until
//! the driver closes stdin (it measures memory meanwhile) or `--hold-seconds` pass.

use std::time::Duration;

use crate::args::Args;
use crate::client::{self, Client};
use crate::lifetime;
use crate::report::{self, Value};

pub fn run(args: &Args) -> Result<(), String> {
    let count: usize = args.number("count", 200)?;
    let hold = Duration::from_secs(args.number("hold-seconds", 120)?);
    let client = Client::from_args(args)?;
    let mut open = Vec::with_capacity(count);
    for index in 0..count {
        let mut connection = client
            .connect()
            .map_err(|e| format!("idle connection {index}: {e}"))?;
        client::echo_one_byte(&mut connection)
            .map_err(|e| format!("idle connection {index}: {e}"))?;
        open.push(connection);
    }
    report::print(&[("ready", Value::Count(open.len() as u64))]);
    lifetime::wait_for_stdin_close(hold);
    for connection in open {
        connection.close();
    }
    Ok(())
}
