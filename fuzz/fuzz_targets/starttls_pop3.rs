//! Fuzz target: POP3 STLS (-starttls pop3 and pop3-). Client and backend chunks interleaved as the script says,
//! judged by starttls_checker.rs. It must never judge by asking the engine.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sslwrap::starttls::Proto;
use sslwrap_fuzz::starttls_checker::{Rules, check};

/// RFC 2595 and the manual: only CAPA and QUIT go to the backend before STLS; USER, PASS, APOP and AUTH never.
static POP3: Rules = Rules {
    proto: Proto::Pop3,
    tagged: false,
    starttls: "STLS",
    accepted_with: "+OK",
    offer: "STLS",
    continuation_marks: false,
    forwarded_when_required: &["CAPA", "QUIT"],
    forwarded_when_optional: &["CAPA", "QUIT"],
    authentication: &["USER", "PASS", "APOP", "AUTH"],
};

fuzz_target!(|data: &[u8]| check(&POP3, data));
