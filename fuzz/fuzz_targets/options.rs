//! Fuzz target: the command line (src/options.rs). The input is the words after the program name, separated by NUL
//! bytes (any other bytes, UTF-8 or not, as a shell would pass them). Every list of words gives a Config, -help,
//! -version or a usage error, never a panic; the same words give the same answer; a usage error says why (log.rs
//! keeps each message to one line, whatever bytes a word holds) and suggests only real options; a pass phrase given as -pass pass:TEXT or mistyped without
//! its `pass:` never shows in a message or in the Config's debug text. It must never change what it checks by
//! asking options.rs.
#![no_main]

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sslwrap::options::{self, Backend, Command};

fuzz_target!(|data: &[u8]| {
    let words: Vec<OsString> = if data.is_empty() {
        Vec::new()
    } else {
        data.split(|&byte| byte == 0)
            .map(|word| OsString::from_vec(word.to_vec()))
            .collect()
    };
    let parsed = options::parse(&words);
    assert_eq!(
        parsed,
        options::parse(&words),
        "the same words parsed twice disagree"
    );
    let secrets = secrets(&words);
    match parsed {
        Ok(Command::Run(config)) => {
            let given = |option: &str| {
                words
                    .iter()
                    .any(|word| word.as_encoded_bytes() == option.as_bytes())
            };
            let source = match config.backend {
                Backend::Tcp { .. } => "-port",
                Backend::Exec { .. } => "-exec",
                Backend::Fd(_) => "-fd",
            };
            assert!(
                given(source),
                "a {source} backend without {source} on the command line"
            );
            // Words after -exec PROG belong to the admin's program, which gets them verbatim: a "-pass pass:TEXT"
            // among them is that program's business, and the Config rightly holds it.
            let program_words: Vec<String> = match &config.backend {
                Backend::Exec { program, args } => std::iter::once(program.as_os_str())
                    .chain(args.iter().map(|arg| arg.as_os_str()))
                    .map(|word| word.to_string_lossy().into_owned())
                    .collect(),
                _ => Vec::new(),
            };
            let shown = format!("{config:?}");
            for secret in secrets.iter().filter(|secret| {
                !program_words
                    .iter()
                    .any(|word| word.contains(secret.as_str()))
            }) {
                assert!(
                    !shown.contains(secret.as_str()),
                    "the Config's debug text shows a pass phrase"
                );
            }
        }
        Ok(Command::Help | Command::Version) => {}
        Err(error) => {
            assert!(
                !error.messages.is_empty(),
                "a usage error without a message"
            );
            let echoable = echoable_words(&words);
            for message in &error.messages {
                assert!(!message.trim().is_empty(), "an empty usage message");
                for secret in &secrets {
                    assert!(
                        !shows(message, secret, &echoable),
                        "a usage message shows a pass phrase: {message:?}"
                    );
                }
            }
            if let Some(suggestion) = error.suggestion {
                let usage = usage();
                assert!(
                    usage.contains(&format!("-{} ", suggestion.trim_start_matches('-')))
                        || usage.contains(&format!("-{}\n", suggestion.trim_start_matches('-'))),
                    "suggested {suggestion:?}, which is no option"
                );
            }
        }
    }
});

fn usage() -> &'static str {
    static USAGE: OnceLock<String> = OnceLock::new();
    USAGE.get_or_init(options::usage)
}

/// The words a usage message may rightly repeat: every word but those right after a `-pass` word.
fn echoable_words(words: &[OsString]) -> Vec<String> {
    words
        .iter()
        .enumerate()
        .filter(|(index, _)| *index == 0 || words[index - 1].as_encoded_bytes() != b"-pass")
        .map(|(_, word)| word.to_string_lossy().into_owned())
        .filter(|word| word.contains('#'))
        .collect()
}

/// Whether `message` shows `secret`: some occurrence of it whose `#` does not lie within a word the message may
/// repeat. (No fixed text of a message holds a `#`, so a `#` comes from a word; a secret can still read across the
/// fixed text and an echoed word, as "ption -x#" does across "unknown option -x#", which shows no pass phrase.)
fn shows(message: &str, secret: &str, echoable: &[String]) -> bool {
    let echoed: Vec<std::ops::Range<usize>> = echoable
        .iter()
        .flat_map(|word| {
            message
                .match_indices(word.as_str())
                .map(|(start, word)| start..start + word.len())
        })
        .collect();
    message.match_indices(secret).any(|(start, _)| {
        secret
            .match_indices('#')
            .any(|(offset, _)| !echoed.iter().any(|span| span.contains(&(start + offset))))
    })
}

/// The words after -pass that are, or may be, a pass phrase: the text of pass:TEXT, and a word given without a
/// known prefix. Only words with a `#` are taken, so that no fixed text of a message can match one by chance.
fn secrets(words: &[OsString]) -> Vec<String> {
    let mut found = Vec::new();
    for pair in words.windows(2) {
        if pair[0].as_encoded_bytes() != b"-pass" {
            continue;
        }
        let word = pair[1].to_string_lossy();
        let known = ["env:", "file:", "fd:"]
            .iter()
            .any(|prefix| word.starts_with(prefix))
            || word == "stdin";
        let text = word.strip_prefix("pass:").unwrap_or(&word);
        // A word that is also given elsewhere (say as a port) may rightly be named in that word's message.
        let given_once = words
            .iter()
            .filter(|other| other.to_string_lossy().contains(text))
            .count()
            == 1;
        if !known && given_once && text.contains('#') && !text.contains('\u{fffd}') {
            found.push(text.to_string());
        }
    }
    found
}
