//! Full handshakes per second: `--clients N` threads, each connecting, completing a fresh handshake, echoing one
//! byte and closing, over and over for `--seconds S`. Blocking threads rather than an event loop: each thread holds
//! one connection, which is what "N concurrent clients" means, and the thread switch is cheap beside a handshake.
//! The per-connection wall times give the inetd runs their number (one client, sequential connections).
//!
//! `--resume`: resumed handshakes instead. Each client thread first makes one full handshake (not counted) to get a
//! session, then offers a session on every connection it counts: the one the previous connection left, which in TLS
//! 1.3 is the fresh ticket the server sent on it (RFC 8446 C.4: a client uses a ticket once) and in TLS 1.2 the
//! session (ticket) it resumed, or its renewal. A connection the server did not resume (SSL_session_reused) counts as
//! an error, never as a handshake, so a wrapper that ignores tickets shows as errors, not as full handshakes measured
//! under the wrong name.

use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use openssl::ssl::SslSession;

use crate::args::Args;
use crate::client::{self, Client};
use crate::report::{self, Value};

/// What one client thread saw.
#[derive(Default)]
struct Tally {
    times: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
}

pub fn run(args: &Args) -> Result<(), String> {
    let client = Client::from_args(args)?;
    let clients: usize = args.number("clients", 8)?;
    let seconds: f64 = args.number("seconds", 5.0)?;
    // --count bounds the number of connections instead of the time (inetd runs); 0 means "until the time is up".
    let count_limit: u64 = args.number("count", 0)?;
    let resume = args.flag("resume");
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let cpu_before = report::cpu_seconds();
    let issued = Mutex::new(0u64);
    let take_ticket = || {
        let mut issued = issued.lock().unwrap_or_else(|e| e.into_inner());
        *issued += 1;
        count_limit == 0 || *issued <= count_limit
    };
    let tallies: Vec<Tally> = thread::scope(|scope| {
        let workers: Vec<_> = (0..clients.max(1))
            .map(|_| scope.spawn(|| one_client(&client, resume, deadline, &take_ticket)))
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_default())
            .collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    let client_cpu = report::cpu_seconds() - cpu_before;
    print_result(tallies, clients, elapsed, client_cpu);
    Ok(())
}

fn one_client(
    client: &Client,
    resume: bool,
    deadline: Instant,
    take_ticket: &(dyn Fn() -> bool + Sync),
) -> Tally {
    let mut tally = Tally::default();
    let mut session = None;
    if resume {
        match first_session(client) {
            Ok(first) => session = Some(first),
            Err(reason) => {
                tally.errors += 1;
                tally.first_error = Some(reason);
                return tally;
            }
        }
    }
    while Instant::now() < deadline && take_ticket() {
        let began = Instant::now();
        let outcome = match &mut session {
            Some(session) => resumed_connection(client, session),
            None => one_connection(client),
        };
        match outcome {
            Ok(()) => tally.times.push(began.elapsed()),
            Err(reason) => {
                tally.errors += 1;
                tally.first_error.get_or_insert(reason);
                // A refused or reset connection comes back at once: do not turn a broken wrapper into a busy loop.
                thread::sleep(Duration::from_millis(5));
            }
        }
    }
    tally
}

fn one_connection(client: &Client) -> Result<(), String> {
    let mut connection = client.connect()?;
    client::echo_one_byte(&mut connection)?;
    connection.close();
    Ok(())
}

/// The full handshake that gives a client thread its first session to resume.
fn first_session(client: &Client) -> Result<SslSession, String> {
    let mut connection = client.connect()?;
    client::echo_one_byte(&mut connection)?;
    let session = connection
        .session()
        .ok_or("the first handshake left no session to resume")?;
    connection.close();
    Ok(session)
}

/// One connection offering `session`; on success `session` becomes the one this connection leaves behind.
fn resumed_connection(client: &Client, session: &mut SslSession) -> Result<(), String> {
    let mut connection = client.resume(session)?;
    client::echo_one_byte(&mut connection)?;
    if !connection.resumed() {
        connection.close();
        return Err(
            "the server did not resume the session (a full handshake was made)".to_string(),
        );
    }
    if let Some(next) = connection.session() {
        *session = next;
    }
    connection.close();
    Ok(())
}

fn print_result(tallies: Vec<Tally>, clients: usize, elapsed: f64, client_cpu: f64) {
    let mut times = Vec::new();
    let mut errors = 0;
    let mut first_error = String::new();
    for tally in tallies {
        times.extend(tally.times);
        errors += tally.errors;
        if first_error.is_empty() {
            first_error = tally.first_error.unwrap_or_default();
        }
    }
    let done = times.len() as u64;
    let median = report::percentile(&mut times, 0.5);
    let p99 = report::percentile(&mut times, 0.99);
    report::print(&[
        ("handshakes", Value::Count(done)),
        ("errors", Value::Count(errors)),
        ("clients", Value::Count(clients as u64)),
        ("seconds", Value::Number(elapsed)),
        ("per_second", Value::Number(done as f64 / elapsed)),
        ("median_ms", Value::Number(median.as_secs_f64() * 1e3)),
        ("p99_ms", Value::Number(p99.as_secs_f64() * 1e3)),
        ("client_cpu_s", Value::Number(client_cpu)),
        ("first_error", Value::Text(first_error)),
    ]);
}
