//! Fuzz target: IMAP STARTTLS (-starttls imap and imap-). Client and backend chunks interleaved as the script
//! says, judged by starttls_checker.rs. It must never judge by asking the engine.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sslwrap::starttls::Proto;
use sslwrap_fuzz::starttls_checker::{Rules, check};

/// RFC 2595 and the manual: CAPABILITY, NOOP and ID (and LOGOUT while TLS is required) go to the backend; LOGIN and
/// AUTHENTICATE never before TLS.
static IMAP: Rules = Rules {
    proto: Proto::Imap,
    tagged: true,
    starttls: "STARTTLS",
    accepted_with: "OK ",
    offer: "STARTTLS",
    continuation_marks: false,
    forwarded_when_required: &["CAPABILITY", "NOOP", "ID", "LOGOUT"],
    forwarded_when_optional: &["CAPABILITY", "NOOP", "ID"],
    authentication: &["LOGIN", "AUTHENTICATE"],
};

fuzz_target!(|data: &[u8]| check(&IMAP, data));
