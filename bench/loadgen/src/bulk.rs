//! Bulk throughput of one connection. upload: `--mib N` pattern bytes to the sink, which compares each with the
//! pattern and answers how many arrived intact; download: the same from the source, compared here. A wrapper that
//! drops, inserts or mangles a byte before the end fails instead of looking fast. The clock covers the transfer only, not the
//! handshake.

use std::io::{Read, Write};
use std::time::Instant;

use crate::args::Args;
use crate::client::{Client, Connection};
use crate::pattern;
use crate::report::{self, Value};

/// The parts every transfer shares: the connection and the payload.
struct Transfer {
    connection: Connection,
    block: Vec<u8>,
    length: u64,
}

impl Transfer {
    fn prepare(args: &Args) -> Result<Transfer, String> {
        let mib: u64 = args.number("mib", 64)?;
        let length = mib * 1024 * 1024;
        let block = pattern::block();
        let connection = Client::from_args(args)?.connect()?;
        Ok(Transfer {
            connection,
            block,
            length,
        })
    }
}

pub fn upload(args: &Args) -> Result<(), String> {
    timed_transfer(args, "upload header", |transfer| {
        let connection = &mut transfer.connection;
        pattern::send(connection, &transfer.block, transfer.length)
            .map_err(|e| format!("upload: {e}"))?;
        let mut answer = [0u8; 8];
        connection
            .read_exact(&mut answer)
            .map_err(|e| format!("reading the sink's answer: {e}"))?;
        Ok(u64::from_be_bytes(answer))
    })
}

pub fn download(args: &Args) -> Result<(), String> {
    timed_transfer(args, "download request", |transfer| {
        pattern::receive_and_check(&mut transfer.connection, &transfer.block, transfer.length)
            .map_err(|e| format!("download: {e}"))
    })
}

/// Sends the length header, runs one direction's transfer (which returns how many bytes arrived intact), and reports
/// its wall and CPU time: the frame shared by upload and download.
fn timed_transfer(
    args: &Args,
    header_step: &str,
    run: impl FnOnce(&mut Transfer) -> Result<u64, String>,
) -> Result<(), String> {
    let mut transfer = Transfer::prepare(args)?;
    let cpu_before = report::cpu_seconds();
    let started = Instant::now();
    transfer
        .connection
        .write_all(&pattern::header(transfer.length))
        .map_err(|e| format!("{header_step}: {e}"))?;
    let intact_prefix = run(&mut transfer)?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = report::cpu_seconds() - cpu_before;
    finish(transfer, intact_prefix, seconds, cpu)
}

fn finish(transfer: Transfer, intact_prefix: u64, seconds: f64, cpu: f64) -> Result<(), String> {
    let intact = intact_prefix == transfer.length;
    let session = transfer.connection.describe();
    transfer.connection.close();
    let mib = transfer.length as f64 / (1024.0 * 1024.0);
    report::print(&[
        ("bytes", Value::Count(transfer.length)),
        ("seconds", Value::Number(seconds)),
        ("mib_per_s", Value::Number(mib / seconds)),
        ("intact", Value::Flag(intact)),
        ("client_cpu_s", Value::Number(cpu)),
        ("session", Value::Text(session)),
    ]);
    if intact {
        Ok(())
    } else {
        Err(format!(
            "the data arrived altered: {intact_prefix} of {} bytes intact",
            transfer.length
        ))
    }
}
