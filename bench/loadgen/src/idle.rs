//! Idle connections for the memory metric: opens `--count` connections, each with a completed handshake and one
//! byte echoed (so the wrapper's backend connection exists too), reports them on stdout, and holds them open until
//! the driver closes stdin (it measures memory meanwhile) or `--hold-seconds` pass. A `probe` line on stdin makes
//! every connection echo one more byte and reports how many answered: idle sessions must still work.

use std::time::{Duration, Instant};

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
    let deadline = Instant::now() + hold;
    while let Some(request) = lifetime::next_request(deadline) {
        if request == "probe" {
            probe(&mut open);
        }
    }
    for connection in open {
        connection.close();
    }
    Ok(())
}

/// Echoes one byte on every connection and reports how many answered, and the first failure.
fn probe(open: &mut [client::Connection]) {
    let mut answered = 0;
    let mut first_error = String::new();
    for (index, connection) in open.iter_mut().enumerate() {
        match client::echo_one_byte(connection) {
            Ok(()) => answered += 1,
            Err(error) if first_error.is_empty() => {
                first_error = format!("idle connection {index}: {error}")
            }
            Err(_) => {}
        }
    }
    report::print(&[
        ("answered", Value::Count(answered)),
        ("first_error", Value::Text(first_error)),
    ]);
}
