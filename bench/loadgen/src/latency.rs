//! Round-trip latency on one established connection: `--size` bytes (64) out, the same back through the echo
//! backend, `--count` times after a warm-up; median and 99th percentile. One message in flight at a time, so what
//! is measured is the wrapper's wake-up, relay and TCP_NODELAY behaviour, not its throughput.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::args::Args;
use crate::client::{Client, Connection};
use crate::report::{self, Value};

/// Round trips before the clock starts: first-use page faults and the TLS 1.3 tickets are not what we measure.
const WARM_UP: usize = 200;

pub fn run(args: &Args) -> Result<(), String> {
    let count: usize = args.number("count", 10_000)?;
    let size: usize = args.number("size", 64)?;
    let mut connection = Client::from_args(args)?.connect()?;
    let message: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let mut answer = vec![0u8; size];
    for _ in 0..WARM_UP {
        round_trip(&mut connection, &message, &mut answer)?;
    }
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        times.push(round_trip(&mut connection, &message, &mut answer)?);
    }
    connection.close();
    let mean = times.iter().sum::<Duration>().as_secs_f64() / count.max(1) as f64;
    let median = report::percentile(&mut times, 0.5);
    let p99 = report::percentile(&mut times, 0.99);
    report::print(&[
        ("count", Value::Count(count as u64)),
        ("size", Value::Count(size as u64)),
        ("median_us", Value::Number(median.as_secs_f64() * 1e6)),
        ("p99_us", Value::Number(p99.as_secs_f64() * 1e6)),
        ("mean_us", Value::Number(mean * 1e6)),
    ]);
    Ok(())
}

fn round_trip(
    connection: &mut Connection,
    message: &[u8],
    answer: &mut [u8],
) -> Result<Duration, String> {
    let started = Instant::now();
    connection
        .write_all(message)
        .map_err(|e| format!("latency write: {e}"))?;
    connection
        .read_exact(answer)
        .map_err(|e| format!("latency read: {e}"))?;
    let took = started.elapsed();
    if answer != message {
        return Err("latency: the echo differs from the message".to_string());
    }
    Ok(took)
}
