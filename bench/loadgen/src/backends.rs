//! The plaintext services every wrapper is put in front of, all on 127.0.0.1 in one process:
//!   echo    returns whatever arrives (handshake, latency and idle runs);
//!   sink    reads an 8-byte length and that many bytes, checks them against the pattern and answers, as 8 bytes,
//!           how many arrived intact from the start (upload);
//!   source  reads an 8-byte length and sends that many pattern bytes (download).
//! One thread per connection keeps them obviously correct; their cost is the same whichever wrapper is in front.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use crate::args::Args;
use crate::{lifetime, pattern, report};

/// Per-connection threads only copy through small buffers; a small stack keeps 200 idle ones cheap.
const THREAD_STACK: usize = 256 * 1024;
/// A backend connection that sees nothing for this long is dropped, so a vanished client frees its thread.
const IDLE_LIMIT: Duration = Duration::from_secs(120);

type Service = fn(TcpStream, &'static [u8]) -> io::Result<()>;

/// Binds the three services, prints their ports, and serves until stdin closes or `--max-seconds` pass.
pub fn serve(args: &Args) -> Result<(), String> {
    let limit = Duration::from_secs(args.number("max-seconds", 3600)?);
    let block: &'static [u8] = Box::leak(pattern::block().into_boxed_slice());
    let services: [(&str, Service); 3] = [("echo", echo), ("sink", sink), ("source", source)];
    let mut ports = Vec::new();
    for (name, service) in services {
        let listener =
            TcpListener::bind("127.0.0.1:0").map_err(|e| format!("{name}: bind: {e}"))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        ports.push((name, report::Value::Count(u64::from(port))));
        thread::spawn(move || accept_forever(listener, service, block));
    }
    report::print(&ports);
    lifetime::wait_for_stdin_close(limit);
    // The per-connection threads may be blocked in reads: leave without waiting for them.
    std::process::exit(0);
}

fn accept_forever(listener: TcpListener, service: Service, block: &'static [u8]) {
    for connection in listener.incoming() {
        let Ok(stream) = connection else {
            // Out of descriptors or similar: back off briefly rather than spin.
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        let spawned = thread::Builder::new()
            .stack_size(THREAD_STACK)
            .spawn(move || {
                let _ = prepare(&stream).and_then(|()| service(stream, block));
            });
        if spawned.is_err() {
            thread::sleep(Duration::from_millis(10));
        }
    }
}

fn prepare(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IDLE_LIMIT))?;
    stream.set_write_timeout(Some(IDLE_LIMIT))
}

fn echo(mut stream: TcpStream, _block: &'static [u8]) -> io::Result<()> {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let count = stream.read(&mut buffer)?;
        if count == 0 {
            return Ok(());
        }
        stream.write_all(&buffer[..count])?;
    }
}

fn read_length(stream: &mut TcpStream) -> io::Result<u64> {
    let mut header = [0u8; 8];
    stream.read_exact(&mut header)?;
    Ok(u64::from_be_bytes(header))
}

/// After the answer, waits for the client to close first, so the wrapper never sees the backend end early.
fn drain_until_closed(stream: &mut TcpStream) {
    let mut scratch = [0u8; 4096];
    while matches!(stream.read(&mut scratch), Ok(count) if count > 0) {}
}

fn sink(mut stream: TcpStream, block: &'static [u8]) -> io::Result<()> {
    let length = read_length(&mut stream)?;
    let intact_prefix = pattern::receive_and_check(&mut stream, block, length)?;
    stream.write_all(&intact_prefix.to_be_bytes())?;
    drain_until_closed(&mut stream);
    Ok(())
}

fn source(mut stream: TcpStream, block: &'static [u8]) -> io::Result<()> {
    let length = read_length(&mut stream)?;
    pattern::send(&mut stream, block, length)?;
    drain_until_closed(&mut stream);
    Ok(())
}
