//! Bulk throughput of one connection. upload: `--mib N` pattern bytes to the sink, which answers their SHA-256;
//! download: the same from the source, hashed here. Both digests are checked against one computed before the clock
//! starts, so a wrapper that drops or mangles a byte fails instead of looking fast. The clock covers the transfer
//! only, not the handshake.

use std::io::{Read, Write};
use std::time::Instant;

use openssl::sha::Sha256;

use crate::args::Args;
use crate::client::{Client, Connection};
use crate::pattern;
use crate::report::{self, Value};

const READ_BUFFER: usize = 256 * 1024;

/// The parts every transfer shares: the connection, the payload and what its digest must be.
struct Transfer {
    connection: Connection,
    block: Vec<u8>,
    length: u64,
    expected: [u8; 32],
}

impl Transfer {
    fn prepare(args: &Args) -> Result<Transfer, String> {
        let mib: u64 = args.number("mib", 64)?;
        let length = mib * 1024 * 1024;
        let block = pattern::block();
        let expected = pattern::digest(&block, length);
        let connection = Client::from_args(args)?.connect()?;
        Ok(Transfer {
            connection,
            block,
            length,
            expected,
        })
    }
}

pub fn upload(args: &Args) -> Result<(), String> {
    timed_transfer(args, "upload header", |transfer| {
        let connection = &mut transfer.connection;
        pattern::send(connection, &transfer.block, transfer.length)
            .map_err(|e| format!("upload: {e}"))?;
        let mut answer = [0u8; 32];
        connection
            .read_exact(&mut answer)
            .map_err(|e| format!("reading the sink's digest: {e}"))?;
        Ok(answer)
    })
}

pub fn download(args: &Args) -> Result<(), String> {
    timed_transfer(args, "download request", |transfer| {
        receive_and_hash(&mut transfer.connection, transfer.length)
    })
}

/// Sends the length header, runs one direction's transfer (which returns the digest to check), and reports its wall
/// and CPU time: the frame shared by upload and download.
fn timed_transfer(
    args: &Args,
    header_step: &str,
    run: impl FnOnce(&mut Transfer) -> Result<[u8; 32], String>,
) -> Result<(), String> {
    let mut transfer = Transfer::prepare(args)?;
    let cpu_before = report::cpu_seconds();
    let started = Instant::now();
    transfer
        .connection
        .write_all(&pattern::header(transfer.length))
        .map_err(|e| format!("{header_step}: {e}"))?;
    let digest = run(&mut transfer)?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = report::cpu_seconds() - cpu_before;
    finish(transfer, digest, seconds, cpu)
}

fn receive_and_hash(connection: &mut Connection, length: u64) -> Result<[u8; 32], String> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; READ_BUFFER];
    let mut received: u64 = 0;
    while received < length {
        let want = (length - received).min(READ_BUFFER as u64) as usize;
        let count = connection
            .read(&mut buffer[..want])
            .map_err(|e| format!("download after {received} bytes: {e}"))?;
        if count == 0 {
            return Err(format!(
                "download: connection closed after {received} of {length} bytes"
            ));
        }
        hasher.update(&buffer[..count]);
        received += count as u64;
    }
    Ok(hasher.finish())
}

fn finish(transfer: Transfer, digest: [u8; 32], seconds: f64, cpu: f64) -> Result<(), String> {
    let intact = digest == transfer.expected;
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
        Err("SHA-256 mismatch: the data arrived altered".to_string())
    }
}
