//! Just enough DER to take a private key out of its PKCS#8 wrapping (RFC 5208) and an EC key out of its SEC1
//! structure (RFC 5915), so that tls.rs can hand the parts to OpenSSL's direct RSA and EC constructors. OpenSSL 3's
//! generic key decoder builds its whole decoder table first, about 4 M instructions per process start, a sixth of an
//! inetd-mode connection. This reader never decides whether a key is valid: anything it does not recognise yields
//! None and the caller uses the generic decoder, which then reports the problem.

/// One DER element: its tag byte and its contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Element<'a> {
    tag: u8,
    content: &'a [u8],
}

const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const OCTET_STRING: u8 = 0x04;
const NULL: &[u8] = &[0x05, 0x00];
const OBJECT_IDENTIFIER: u8 = 0x06;
const SEQUENCE: u8 = 0x30;
const CONTEXT_0: u8 = 0xa0;
const CONTEXT_1: u8 = 0xa1;

/// 1.2.840.113549.1.1.1, rsaEncryption.
const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// 1.2.840.10045.2.1, id-ecPublicKey.
const EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];

/// The named curves read directly: 1.2.840.10045.3.1.7 (P-256), 1.3.132.0.34 (P-384), 1.3.132.0.35 (P-521).
pub const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
pub const P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
pub const P521: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x23];

/// The key inside a PKCS#8 PrivateKeyInfo, for the two algorithms read directly.
#[derive(Debug, PartialEq, Eq)]
pub enum Pkcs8Key<'a> {
    /// A PKCS#1 RSAPrivateKey.
    Rsa(&'a [u8]),
    /// The named curve's OID contents and the SEC1 ECPrivateKey.
    Ec { curve: &'a [u8], sec1: &'a [u8] },
}

/// Splits the first element off `input`; None if it is cut short or its length is not a definite one of at most
/// four bytes.
fn split_element(input: &[u8]) -> Option<(Element<'_>, &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let length = rest[..count]
            .iter()
            .fold(0usize, |length, &byte| length << 8 | usize::from(byte));
        (length, &rest[count..])
    };
    if rest.len() < length {
        return None;
    }
    let (content, rest) = rest.split_at(length);
    Some((Element { tag, content }, rest))
}

/// The first element of `input` if it has the tag, with what follows it.
fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (element, rest) = split_element(input)?;
    (element.tag == tag).then_some((element.content, rest))
}

/// The contents of `input` if it is exactly one element with the tag and nothing after it.
fn expect_only(input: &[u8], tag: u8) -> Option<&[u8]> {
    let (content, rest) = expect(input, tag)?;
    rest.is_empty().then_some(content)
}

/// PrivateKeyInfo ::= SEQUENCE { version 0, AlgorithmIdentifier, privateKey OCTET STRING, [0] attributes OPTIONAL }
/// Anything more inside, or parameters that are not the algorithm's own, make it None (OpenSSL then decides).
pub fn unwrap_pkcs8(der: &[u8]) -> Option<Pkcs8Key<'_>> {
    let (info, _) = expect(der, SEQUENCE)?;
    let (version, rest) = expect(info, INTEGER)?;
    if version != [0] {
        return None;
    }
    let (algorithm, rest) = expect(rest, SEQUENCE)?;
    let (private_key, attributes) = expect(rest, OCTET_STRING)?;
    if !attributes.is_empty() {
        expect_only(attributes, CONTEXT_0)?;
    }
    let (oid, parameters) = expect(algorithm, OBJECT_IDENTIFIER)?;
    match oid {
        RSA_ENCRYPTION if parameters.is_empty() || parameters == NULL => {
            Some(Pkcs8Key::Rsa(private_key))
        }
        EC_PUBLIC_KEY => Some(Pkcs8Key::Ec {
            curve: expect_only(parameters, OBJECT_IDENTIFIER)?,
            sec1: private_key,
        }),
        _ => None,
    }
}

/// The private scalar and, when present, the public point of a SEC1 key on `curve` (the PKCS#8 wrapping's):
/// ECPrivateKey ::= SEQUENCE { version 1, privateKey OCTET STRING, [0] parameters OPTIONAL, [1] publicKey OPTIONAL }
/// Parameters naming another curve, or anything else inside, make it None (OpenSSL then decides).
pub fn sec1_parts<'a>(der: &'a [u8], curve: &[u8]) -> Option<(&'a [u8], Option<&'a [u8]>)> {
    let (key, _) = expect(der, SEQUENCE)?;
    let (version, rest) = expect(key, INTEGER)?;
    if version != [1] {
        return None;
    }
    let (scalar, mut rest) = expect(rest, OCTET_STRING)?;
    if let Some((parameters, after)) = expect(rest, CONTEXT_0) {
        if expect_only(parameters, OBJECT_IDENTIFIER)? != curve {
            return None;
        }
        rest = after;
    }
    let mut point = None;
    if let Some((public, after)) = expect(rest, CONTEXT_1) {
        // The first content byte of a BIT STRING counts the unused bits: a point has none.
        match expect_only(public, BIT_STRING)?.split_first() {
            Some((0, encoded)) => point = Some(encoded),
            _ => return None,
        }
        rest = after;
    }
    rest.is_empty().then_some((scalar, point))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn short_and_long_lengths() {
        assert_eq!(
            split_element(&[0x04, 0x02, 0xaa, 0xbb, 0xcc]),
            Some((
                Element {
                    tag: 0x04,
                    content: &[0xaa, 0xbb]
                },
                &[0xcc][..]
            ))
        );
        let mut long = vec![0x04, 0x81, 0x80];
        long.extend([7u8; 0x80]);
        let (element, rest) = split_element(&long).unwrap();
        assert_eq!(element.content.len(), 0x80);
        assert!(rest.is_empty());
    }

    #[test]
    fn truncated_or_indefinite_elements_are_refused() {
        assert_eq!(split_element(&[]), None);
        assert_eq!(split_element(&[0x04]), None);
        assert_eq!(split_element(&[0x04, 0x03, 0x00]), None);
        assert_eq!(split_element(&[0x30, 0x80, 0x00, 0x00]), None);
        assert_eq!(split_element(&[0x04, 0x85, 1, 0, 0, 0, 0]), None);
    }

    /// An RSA PrivateKeyInfo around a (dummy) PKCS#1 body.
    #[test]
    fn pkcs8_rsa() {
        let der = decode_hex("301a020100300d06092a864886f70d01010105000406300402010000");
        assert_eq!(
            unwrap_pkcs8(&der),
            Some(Pkcs8Key::Rsa(&decode_hex("300402010000")))
        );
    }

    /// A P-256 PrivateKeyInfo as `openssl genpkey` writes it (scalar shortened).
    #[test]
    fn pkcs8_ec_names_its_curve() {
        let der = decode_hex(
            "3027020100301306072a8648ce3d020106082a8648ce3d030107040d300b0201010406010203040506",
        );
        assert_eq!(
            unwrap_pkcs8(&der),
            Some(Pkcs8Key::Ec {
                curve: &decode_hex("2a8648ce3d030107"),
                sec1: &decode_hex("300b0201010406010203040506"),
            })
        );
    }

    #[test]
    fn other_algorithms_and_versions_are_left_to_openssl() {
        // Ed25519 (1.3.101.112).
        let ed25519 = decode_hex("3010020100300506032b657004040400000000");
        assert_eq!(unwrap_pkcs8(&ed25519), None);
        // Version 1 (OneAsymmetricKey with a public key).
        let version_1 = decode_hex("301a020101300d06092a864886f70d01010105000406300402010000");
        assert_eq!(unwrap_pkcs8(&version_1), None);
    }

    /// What OpenSSL's own decoder refuses is never accepted here either: junk after the key, RSA parameters other
    /// than NULL, anything after the curve.
    #[test]
    fn pkcs8_with_anything_extra_is_left_to_openssl() {
        let junk_after_key =
            decode_hex("301c020100300d06092a864886f70d010101050004063004020100000500");
        assert_eq!(unwrap_pkcs8(&junk_after_key), None);
        let rsa_parameters = decode_hex("301a020100300d06092a864886f70d01010102000406300402010000");
        assert_eq!(unwrap_pkcs8(&rsa_parameters), None);
        let after_curve = decode_hex(
            "3029020100301506072a8648ce3d020106082a8648ce3d0301070500040d300b0201010406010203040506",
        );
        assert_eq!(unwrap_pkcs8(&after_curve), None);
        let with_attributes =
            decode_hex("301c020100300d06092a864886f70d01010105000406300402010000a000");
        assert_eq!(
            unwrap_pkcs8(&with_attributes),
            Some(Pkcs8Key::Rsa(&decode_hex("300402010000")))
        );
    }

    #[test]
    fn sec1_with_and_without_public_point() {
        let with_point = decode_hex("300e0201010402010ba1050303000405");
        assert_eq!(
            sec1_parts(&with_point, P256),
            Some((&[0x01, 0x0b][..], Some(&[0x04, 0x05][..])))
        );
        let with_curve_and_point =
            decode_hex("301a0201010402010ba00a06082a8648ce3d030107a1050303000405");
        assert_eq!(
            sec1_parts(&with_curve_and_point, P256),
            Some((&[0x01, 0x0b][..], Some(&[0x04, 0x05][..])))
        );
        let without = decode_hex("300702010104020102");
        assert_eq!(sec1_parts(&without, P256), Some((&[0x01, 0x02][..], None)));
    }

    #[test]
    fn odd_sec1_keys_are_left_to_openssl() {
        let unused_bits = decode_hex("300e0201010402010ba1050303010405");
        assert_eq!(sec1_parts(&unused_bits, P256), None);
        let version_2 = decode_hex("300702010204020102");
        assert_eq!(sec1_parts(&version_2, P256), None);
        let other_curve = decode_hex("30100201010402010ba00706052b81040022");
        assert_eq!(sec1_parts(&other_curve, P256), None);
        let trailing_element = decode_hex("3009020101040201020500");
        assert_eq!(sec1_parts(&trailing_element, P256), None);
    }
}
