//! Fuzz target: the PROXY protocol header parser (src/proxy_header.rs, `parse_header`), as `-accept_proxy` uses it
//! on the first bytes of a connection. Any input: it must never panic; it must ask for more bytes only when it holds
//! fewer than it asks for, and never beyond the bounds (107 bytes for v1, MAX_RECEIVED_V2_LEN for v2); a header it
//! finds must lie within the input and parse the same from exactly its own bytes; and no prefix of a valid header may
//! be refused, or ask for a byte past the header's end (the reader would take a byte of the TLS handshake after it).
//! Then the builder's output for addresses from the input must parse back to those addresses (a round trip).
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use sslwrap::proxy_header::{
    Carried, MAX_RECEIVED_V2_LEN, Parsed, ProxyVersion, V1_MAX_LEN, parse_header, proxy_header,
};

fuzz_target!(|data: &[u8]| {
    check_parse(data);
    round_trip(data);
});

fn check_parse(data: &[u8]) {
    match parse_header(data) {
        Parsed::NeedAtLeast(wanted) => {
            assert!(
                wanted > data.len(),
                "asks for {wanted} holding {}",
                data.len()
            );
            assert!(
                wanted <= MAX_RECEIVED_V2_LEN.max(V1_MAX_LEN),
                "asks for {wanted}"
            );
        }
        Parsed::Invalid(reason) => assert!(!reason.is_empty()),
        Parsed::Header(header) => {
            assert!(
                header.length <= data.len(),
                "a header longer than the input"
            );
            let bound = match header.version {
                ProxyVersion::V1 => V1_MAX_LEN,
                ProxyVersion::V2 => MAX_RECEIVED_V2_LEN,
            };
            assert!(
                header.length <= bound,
                "a header of {} bytes",
                header.length
            );
            let own = &data[..header.length];
            assert_eq!(
                parse_header(own),
                Parsed::Header(header),
                "not the same from its own bytes"
            );
            for cut in 0..header.length {
                match parse_header(&own[..cut]) {
                    Parsed::NeedAtLeast(wanted) => assert!(
                        wanted > cut && wanted <= header.length,
                        "at {cut} of {} it asks for {wanted}",
                        header.length
                    ),
                    other => panic!("the first {cut} bytes of a valid header: {other:?}"),
                }
            }
        }
    }
}

/// A pair of addresses from the input, built into both versions and parsed back.
fn round_trip(data: &[u8]) {
    let mut bytes = data.iter().copied().chain(std::iter::repeat(0));
    let mut take = |count: usize| -> Vec<u8> { bytes.by_ref().take(count).collect() };
    let mut address = || -> SocketAddr {
        let kind = take(1)[0];
        let port = u16::from_be_bytes([take(1)[0], take(1)[0]]);
        let ip = if kind & 1 == 0 {
            IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(take(4)).unwrap()))
        } else {
            IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(take(16)).unwrap()))
        };
        SocketAddr::new(ip, port)
    };
    let (source, destination) = (address(), address());
    for version in [ProxyVersion::V1, ProxyVersion::V2] {
        let built = proxy_header(version, source, destination, None);
        let Parsed::Header(header) = parse_header(&built) else {
            panic!("{version:?} header {built:?} does not parse");
        };
        assert_eq!(header.length, built.len());
        assert_eq!(header.version, version);
        let Carried::Client {
            source: parsed_source,
            destination: parsed_destination,
        } = header.carried
        else {
            panic!("{:?}", header.carried);
        };
        // The builder states IPv4-mapped ends as IPv4 and a mixed pair as IPv6: the same addresses either way.
        let same = |a: SocketAddr, b: SocketAddr| {
            a.ip().to_canonical() == b.ip().to_canonical() && a.port() == b.port()
        };
        assert!(same(parsed_source, source), "{parsed_source} for {source}");
        assert!(
            same(parsed_destination, destination),
            "{parsed_destination} for {destination}"
        );
    }
}
