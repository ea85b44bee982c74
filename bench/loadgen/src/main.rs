//! loadgen: the load client and the plaintext backends of sslwrap's benchmark, as subcommands of one binary so the
//! driver (bench/run) builds a single thing. Every subcommand prints exactly one JSON line on stdout (its result) and
//! exits non-zero with a one-line reason on stderr when it could not measure.
//!
//!   serve       echo, sink and source backends on 127.0.0.1, ports printed as JSON, until stdin closes
//!   handshakes  full (or with --resume, resumed) handshakes per second with N concurrent clients
//!   upload      one connection, N MiB to the sink, every byte checked by the sink
//!   download    one connection, N MiB from the source, every byte checked here
//!   latency     64-byte round trips on one connection through the echo backend
//!   idle        N established connections held open until stdin closes

mod args;
mod backends;
mod bulk;
mod client;
mod handshakes;
mod idle;
mod latency;
mod lifetime;
mod pattern;
mod report;

use args::Args;

fn main() {
    let words: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = words.split_first() else {
        fail("usage: loadgen serve|handshakes|upload|download|latency|idle [--name value ...]");
    };
    let outcome = Args::parse(rest).and_then(|args| dispatch(command, &args));
    if let Err(reason) = outcome {
        fail(&reason);
    }
}

fn dispatch(command: &str, args: &Args) -> Result<(), String> {
    match command {
        "serve" => backends::serve(args),
        "handshakes" => handshakes::run(args),
        "upload" => bulk::upload(args),
        "download" => bulk::download(args),
        "latency" => latency::run(args),
        "idle" => idle::run(args),
        other => Err(format!("unknown subcommand '{other}'")),
    }
}

fn fail(reason: &str) -> ! {
    eprintln!("loadgen: {reason}");
    std::process::exit(1);
}
