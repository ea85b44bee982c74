//! The README's `make demo`, run as a newcomer would: on a chosen port it listens before it says what to try, a
//! client's line comes back, and stopping make's own process leaves no process and no scratch directory behind.

mod common;

use std::io::{BufRead, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Processes whose command line mentions `text`.
fn processes_mentioning(text: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|command| String::from_utf8_lossy(&command).contains(text))
        })
        .collect()
}

#[test]
fn make_demo_on_a_chosen_port_echoes_and_stopping_make_cleans_up() {
    let port = free_port_on("127.0.0.1");
    let mut make = KilledOnDrop(
        Command::new("make")
            .args(["-s", "-C", env!("CARGO_MANIFEST_DIR"), "demo"])
            .arg(format!("PORT={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // The first line names the scratch directory; the "try:" line comes only once the port listens.
    let mut lines = std::io::BufReader::new(make.0.stdout.take().unwrap()).lines();
    let first = lines.next().expect("demo printed nothing").unwrap();
    let dir = first
        .split("(certificate in ")
        .nth(1)
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("unexpected first line: {first}"))
        .to_string();
    assert_eq!(
        first,
        format!("sslwrap demo: TLS echo service on 127.0.0.1:{port} (certificate in {dir})")
    );
    let try_line = lines.next().unwrap().unwrap();
    assert!(try_line.starts_with(&format!("try:  openssl s_client -connect 127.0.0.1:{port}")));
    assert!(is_listening(port), "said what to try before listening");
    let mut client = tls(port);
    client.write_all(b"a line\n").unwrap();
    let mut echoed = [0u8; 7];
    client.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"a line\n");
    drop(client);

    assert!(
        Command::new("kill")
            .args(["-s", "TERM", &make.0.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    wait_with_timeout(&mut make.0, Duration::from_secs(20)).expect("make did not stop");
    let deadline = Instant::now() + Duration::from_secs(20);
    while (std::path::Path::new(&dir).exists() || !processes_mentioning(&dir).is_empty())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!std::path::Path::new(&dir).exists(), "{dir} left behind");
    assert_eq!(
        processes_mentioning(&dir),
        Vec::<u32>::new(),
        "processes left behind"
    );
    assert!(!is_listening(port), "the port still listens");
}
