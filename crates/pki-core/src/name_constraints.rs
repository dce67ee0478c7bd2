//! Name constraints (RFC 5280 section 4.2.1.10): the names the certificates
//! below a CA may carry.
//!
//! Supported forms: `dNSName`, `iPAddress`, `rfc822Name` and
//! `directoryName`, in permitted and excluded subtrees. A constraint of any
//! other form (URI, otherName, ...), or a subtree with a `minimum` or
//! `maximum`, cannot be applied here: the chain then fails closed.
//!
//! What is checked: the subject (as a `directoryName`, and each
//! `emailAddress` attribute as an `rfc822Name`) and every subject
//! alternative name. The common name is never taken for a DNS name (as in
//! host name matching, RFC 6125): constrain subjects with `directoryName`
//! subtrees instead.

use std::net::IpAddr;

use der::asn1::Any;
use der::oid::db::rfc3280::EMAIL_ADDRESS;
use der::{Tag, Tagged};
use x509_cert::ext::pkix::constraints::name::{GeneralSubtree, NameConstraints};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::name::{Name, RelativeDistinguishedName};

use crate::san::DnsName;

/// Why a certificate's names break a CA's name constraints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Violation {
    /// A name in an excluded subtree (`excluded`), or outside every
    /// permitted subtree of its form.
    Name {
        /// The name, e.g. `DNS:evil.example`.
        name: String,
        /// Excluded rather than not permitted.
        excluded: bool,
    },
    /// Constraints (or a name under them) this verifier cannot apply.
    Unsupported(String),
}

/// The forms of name this module understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Dns,
    Ip,
    Email,
    Directory,
}

fn form_of(name: &GeneralName) -> std::result::Result<Form, &'static str> {
    Ok(match name {
        GeneralName::DnsName(_) => Form::Dns,
        GeneralName::IpAddress(_) => Form::Ip,
        GeneralName::Rfc822Name(_) => Form::Email,
        GeneralName::DirectoryName(_) => Form::Directory,
        GeneralName::OtherName(_) => return Err("otherName"),
        GeneralName::EdiPartyName(_) => return Err("ediPartyName"),
        GeneralName::UniformResourceIdentifier(_) => return Err("URI"),
        GeneralName::RegisteredId(_) => return Err("registeredID"),
    })
}

/// Checks every name of a certificate with `subject` and `sans` against
/// `constraints`.
pub(crate) fn check(
    constraints: &NameConstraints,
    subject: &Name,
    sans: &[GeneralName],
) -> std::result::Result<(), Violation> {
    let permitted = constraints.permitted_subtrees.as_deref().unwrap_or(&[]);
    let excluded = constraints.excluded_subtrees.as_deref().unwrap_or(&[]);
    for subtree in permitted.iter().chain(excluded) {
        validate_subtree(subtree)?;
    }

    let mut names: Vec<GeneralName> = Vec::new();
    if !subject.is_empty() {
        names.push(GeneralName::DirectoryName(subject.clone()));
    }
    for atv in subject.iter().filter(|atv| atv.oid == EMAIL_ADDRESS) {
        let email = atv
            .value
            .decode_as::<der::asn1::Ia5String>()
            .map_err(|_| Violation::Unsupported("an emailAddress that is no IA5String".into()))?;
        names.push(GeneralName::Rfc822Name(email));
    }
    names.extend(sans.iter().cloned());

    for name in &names {
        // A form no subtree constrains is not restricted (RFC 5280
        // section 4.2.1.10); the unsupported forms are unconstrained here,
        // since a constraint of such a form was refused above.
        let Ok(form) = form_of(name) else { continue };
        let of_form = |trees: &[GeneralSubtree]| -> Vec<GeneralName> {
            trees
                .iter()
                .filter(|t| form_of(&t.base).ok() == Some(form))
                .map(|t| t.base.clone())
                .collect()
        };
        let excluded = of_form(excluded);
        let permitted = of_form(permitted);
        for base in &excluded {
            if matches(name, base, Match::Overlaps)? {
                return Err(Violation::Name {
                    name: display(name),
                    excluded: true,
                });
            }
        }
        if !permitted.is_empty() {
            let mut inside = false;
            for base in &permitted {
                if matches(name, base, Match::Within)? {
                    inside = true;
                    break;
                }
            }
            if !inside {
                return Err(Violation::Name {
                    name: display(name),
                    excluded: false,
                });
            }
        }
    }
    Ok(())
}

fn validate_subtree(subtree: &GeneralSubtree) -> std::result::Result<(), Violation> {
    if let Err(form) = form_of(&subtree.base) {
        return Err(Violation::Unsupported(format!(
            "it constrains {form} names, which this verifier cannot check"
        )));
    }
    if subtree.minimum != 0 || subtree.maximum.is_some() {
        return Err(Violation::Unsupported(
            "a subtree has a minimum or maximum (RFC 5280 section 4.2.1.10 forbids them)".into(),
        ));
    }
    if let GeneralName::IpAddress(octets) = &subtree.base {
        let bytes = octets.as_bytes();
        let mask = match bytes.len() {
            8 => &bytes[4..],
            32 => &bytes[16..],
            n => {
                return Err(Violation::Unsupported(format!(
                    "an iPAddress constraint of {n} octets (8 or 32 expected)"
                )));
            }
        };
        if !contiguous(mask) {
            return Err(Violation::Unsupported(
                "an iPAddress constraint whose mask is not a prefix".into(),
            ));
        }
    }
    Ok(())
}

/// Whether a mask is a run of one bits followed by zero bits.
fn contiguous(mask: &[u8]) -> bool {
    let mut zero_seen = false;
    for byte in mask {
        for bit in (0..8).rev() {
            let one = byte & (1 << bit) != 0;
            if one && zero_seen {
                return false;
            }
            zero_seen |= !one;
        }
    }
    true
}

/// Within: every name the presented name stands for lies in the subtree
/// (for permitted subtrees). Overlaps: at least one does (for excluded
/// subtrees). They differ only for a wildcard DNS name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Match {
    Within,
    Overlaps,
}

fn matches(
    name: &GeneralName,
    base: &GeneralName,
    how: Match,
) -> std::result::Result<bool, Violation> {
    match (name, base) {
        (GeneralName::DnsName(n), GeneralName::DnsName(b)) => {
            let checked: DnsName = n.as_str().parse().map_err(|_| {
                Violation::Unsupported(format!(
                    "the DNS name {:?} is not a host name and cannot be checked",
                    n.as_str()
                ))
            })?;
            Ok(dns_matches(checked.as_str(), b.as_str(), how))
        }
        (GeneralName::IpAddress(n), GeneralName::IpAddress(b)) => {
            ip_matches(n.as_bytes(), b.as_bytes())
        }
        (GeneralName::Rfc822Name(n), GeneralName::Rfc822Name(b)) => {
            email_matches(n.as_str(), b.as_str())
        }
        (GeneralName::DirectoryName(n), GeneralName::DirectoryName(b)) => {
            // A value in a string type that cannot be compared (a
            // TeletexString beyond ASCII) could hide an excluded name.
            if let Some(value) = n
                .iter()
                .map(|atv| &atv.value)
                .find(|v| is_string(v) && string_value(v).is_none())
            {
                return Err(Violation::Unsupported(format!(
                    "a directory name value of type {} cannot be compared",
                    value.tag()
                )));
            }
            Ok(dn_within(n, b))
        }
        _ => Ok(false),
    }
}

/// `name` lies in the DNS subtree `base`: `example.com` holds itself and
/// every name below it, `.example.com` only the names below it, the empty
/// base everything (case-insensitive, RFC 5280 section 4.2.1.10).
fn dns_within(name: &str, base: &str) -> bool {
    let base = base.trim_end_matches('.').to_ascii_lowercase();
    if base.is_empty() {
        return true;
    }
    match base.strip_prefix('.') {
        Some(_) => name.len() > base.len() && name.ends_with(&base),
        None => name == base || name.ends_with(&format!(".{base}")),
    }
}

fn dns_matches(name: &str, base: &str, how: Match) -> bool {
    let Some(suffix) = name.strip_prefix("*.") else {
        return dns_within(name, base);
    };
    // `*.s` stands for every `x.s`: all of them lie under `base` exactly
    // when `s` lies under the base without its leading dot.
    let plain = base
        .trim_end_matches('.')
        .trim_start_matches('.')
        .to_ascii_lowercase();
    if dns_within(suffix, &plain) {
        return true;
    }
    // One of them does when the base is `label.s` for a single label.
    how == Match::Overlaps
        && !base.starts_with('.')
        && plain
            .strip_suffix(suffix)
            .and_then(|head| head.strip_suffix('.'))
            .is_some_and(|label| !label.is_empty() && !label.contains('.'))
}

fn ip_matches(name: &[u8], base: &[u8]) -> std::result::Result<bool, Violation> {
    let address: IpAddr = match name.len() {
        4 => <[u8; 4]>::try_from(name).map(IpAddr::from),
        16 => <[u8; 16]>::try_from(name).map(IpAddr::from),
        n => {
            return Err(Violation::Unsupported(format!(
                "an iPAddress name of {n} octets cannot be checked"
            )));
        }
    }
    .map_err(|_| Violation::Unsupported("an iPAddress name cannot be read".into()))?;
    // An IPv4-mapped IPv6 address is checked both as the IPv6 address it
    // is written as and as the IPv4 address it stands for, so that it
    // slips past neither an IPv4 nor an IPv6 exclusion.
    let mut forms = vec![address];
    if let IpAddr::V6(v6) = address
        && let Some(v4) = v6.to_ipv4_mapped()
    {
        forms.push(IpAddr::V4(v4));
    }
    Ok(forms.into_iter().any(|address| {
        let octets: Vec<u8> = match address {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        if base.len() != octets.len() * 2 {
            return false;
        }
        let (net, mask) = base.split_at(octets.len());
        octets
            .iter()
            .zip(net)
            .zip(mask)
            .all(|((a, n), m)| a & m == n & m)
    }))
}

/// RFC 5280 section 4.2.1.10: `user@host` is one mailbox, `host` every
/// mailbox at that host, `.host` every mailbox at a host below it. Host
/// parts compare case-insensitively, local parts exactly.
fn email_matches(name: &str, base: &str) -> std::result::Result<bool, Violation> {
    let Some((local, host)) = name.rsplit_once('@') else {
        return Err(Violation::Unsupported(format!(
            "the email address {name:?} has no @ and cannot be checked"
        )));
    };
    let host = host.to_ascii_lowercase();
    if let Some((base_local, base_host)) = base.rsplit_once('@') {
        return Ok(local == base_local && host == base_host.to_ascii_lowercase());
    }
    let base = base.to_ascii_lowercase();
    Ok(match base.strip_prefix('.') {
        Some(_) => host.ends_with(&base),
        None => host == base,
    })
}

/// Whether `name` lies under `base`: `base`'s RDNs are the first RDNs of
/// `name`.
fn dn_within(name: &Name, base: &Name) -> bool {
    base.len() <= name.len()
        && base
            .iter_rdn()
            .zip(name.iter_rdn())
            .all(|(b, n)| rdn_equal(b, n))
}

fn rdn_equal(a: &RelativeDistinguishedName, b: &RelativeDistinguishedName) -> bool {
    a.len() == b.len()
        && a.iter().all(|x| {
            b.iter()
                .any(|y| x.oid == y.oid && value_equal(&x.value, &y.value))
        })
}

/// Attribute values compare as strings after case folding and whitespace
/// folding (a subset of RFC 4518), whatever string type encodes them, so
/// that a re-encoded name cannot slip past an exclusion; other values
/// compare by their encoding.
fn value_equal(a: &Any, b: &Any) -> bool {
    if a == b {
        return true;
    }
    match (string_value(a), string_value(b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// Whether a value is of a directory string type.
fn is_string(value: &Any) -> bool {
    matches!(
        value.tag(),
        Tag::Utf8String
            | Tag::PrintableString
            | Tag::Ia5String
            | Tag::VisibleString
            | Tag::NumericString
            | Tag::TeletexString
            | Tag::BmpString
    )
}

/// The text of a string attribute value in any of the directory string
/// types (UTF-16 BMPString decoded; a TeletexString only when it is
/// ASCII, where T.61 and ASCII agree).
fn string_value(value: &Any) -> Option<String> {
    let bytes = value.value();
    let text: String = match value.tag() {
        Tag::Utf8String
        | Tag::PrintableString
        | Tag::Ia5String
        | Tag::VisibleString
        | Tag::NumericString => std::str::from_utf8(bytes).ok()?.to_owned(),
        Tag::TeletexString if bytes.is_ascii() => std::str::from_utf8(bytes).ok()?.to_owned(),
        Tag::BmpString if bytes.len().is_multiple_of(2) => char::decode_utf16(
            bytes
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]])),
        )
        .collect::<Result<String, _>>()
        .ok()?,
        _ => return None,
    };
    Some(
        text.split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase(),
    )
}

fn display(name: &GeneralName) -> String {
    match name {
        GeneralName::DnsName(d) => format!("DNS:{}", d.as_str()),
        GeneralName::IpAddress(o) => match o.as_bytes().len() {
            4 | 16 => crate::san::SubjectAltName::from_general_name(name)
                .map_or_else(|| "IP:?".into(), |s| s.to_string()),
            _ => "IP:?".into(),
        },
        GeneralName::Rfc822Name(e) => format!("email:{}", e.as_str()),
        GeneralName::DirectoryName(n) => format!("DirName:{n}"),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_subtrees() {
        assert!(dns_within("example.com", "example.com"));
        assert!(dns_within("a.b.example.com", "Example.COM"));
        assert!(!dns_within("badexample.com", "example.com"));
        assert!(!dns_within("example.com", ".example.com"));
        assert!(dns_within("a.example.com", ".example.com"));
        assert!(dns_within("anything.org", ""));
        assert!(dns_matches("*.example.com", "example.com", Match::Within));
        assert!(!dns_matches(
            "*.example.com",
            "a.example.com",
            Match::Within
        ));
        assert!(dns_matches(
            "*.example.com",
            "a.example.com",
            Match::Overlaps
        ));
        assert!(!dns_matches(
            "*.example.com",
            "a.b.example.com",
            Match::Overlaps
        ));
        assert!(!dns_matches(
            "*.example.com",
            ".a.example.com",
            Match::Overlaps
        ));
    }

    #[test]
    fn an_ipv4_mapped_address_meets_ipv4_and_ipv6_subtrees() {
        let mapped: [u8; 16] = "::ffff:10.0.0.1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        // 10.0.0.0/8
        assert!(ip_matches(&mapped, &[10, 0, 0, 0, 255, 0, 0, 0]).unwrap());
        // ::ffff:0:0/96
        let mut v6 = [0u8; 32];
        v6[10] = 0xff;
        v6[11] = 0xff;
        v6[16..28].fill(0xff);
        assert!(ip_matches(&mapped, &v6).unwrap());
        assert!(!ip_matches(&[10, 0, 0, 1], &v6).unwrap());
    }

    #[test]
    fn directory_strings_compare_whatever_their_type() {
        let utf8 = Any::new(Tag::Utf8String, "Evil  Corp".as_bytes().to_vec()).unwrap();
        let bmp: Vec<u8> = "evil corp"
            .encode_utf16()
            .flat_map(u16::to_be_bytes)
            .collect();
        let bmp = Any::new(Tag::BmpString, bmp).unwrap();
        assert!(value_equal(&utf8, &bmp));
        let teletex = Any::new(Tag::TeletexString, vec![0x45, 0xe9]).unwrap();
        assert!(is_string(&teletex) && string_value(&teletex).is_none());
    }

    #[test]
    fn email_subtrees() {
        assert!(email_matches("u@Example.com", "example.com").unwrap());
        assert!(!email_matches("u@a.example.com", "example.com").unwrap());
        assert!(email_matches("u@a.example.com", ".example.com").unwrap());
        assert!(email_matches("u@example.com", "u@EXAMPLE.com").unwrap());
        assert!(!email_matches("U@example.com", "u@example.com").unwrap());
        assert!(email_matches("nobody", "example.com").is_err());
    }

    #[test]
    fn masks_must_be_prefixes() {
        assert!(contiguous(&[255, 255, 0, 0]));
        assert!(contiguous(&[255, 240, 0, 0]));
        assert!(!contiguous(&[255, 0, 255, 0]));
    }
}
