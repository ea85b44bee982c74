//! Fuzz target: SMTP STARTTLS (-starttls smtp and smtp-). Client and backend chunks interleaved as the script
//! says, judged by starttls_checker.rs. It must never judge by asking the engine.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sslwrap::starttls::Proto;
use sslwrap_fuzz::starttls_checker::{Rules, check};

/// RFC 3207 section 4 and the manual: EHLO, HELO, NOOP, RSET and QUIT go to the backend before STARTTLS; AUTH (and
/// with it any mail transaction) never.
static SMTP: Rules = Rules {
    proto: Proto::Smtp,
    tagged: false,
    starttls: "STARTTLS",
    accepted_with: "220 ",
    offer: "STARTTLS",
    continuation_marks: true,
    forwarded_when_required: &["EHLO", "HELO", "NOOP", "RSET", "QUIT"],
    forwarded_when_optional: &["EHLO", "HELO", "NOOP", "RSET", "QUIT"],
    authentication: &["AUTH"],
};

fuzz_target!(|data: &[u8]| check(&SMTP, data));
