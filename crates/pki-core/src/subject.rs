//! Distinguished names for certificate subjects.

use std::fmt;

use der::Tagged;
use der::asn1::{Any, PrintableStringRef, SetOfVec, Utf8StringRef};
use der::oid::ObjectIdentifier;
use der::oid::db::rfc4519;
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};

use crate::error::{Error, Result};

/// The subject of a certificate or CSR: a common name and optional
/// organisational attributes, validated against RFC 5280's upper bounds
/// (Appendix A.1) when built.
///
/// Encoded in the conventional order C, ST, L, O, OU, CN; the country as a
/// `PrintableString`, everything else as `UTF8String` (section 4.1.2.6).
///
/// ```
/// use pki_core::Subject;
///
/// let subject = Subject::new("Client1")?.country("US")?.organization("MyOrg")?;
/// assert_eq!(subject.to_string(), "CN=Client1,O=MyOrg,C=US");
/// assert!(Subject::new("").is_err());
/// assert!(Subject::new("x".repeat(65)).is_err());
/// assert!(Subject::new("ok")?.country("USA").is_err());
/// # Ok::<(), pki_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Subject {
    common_name: String,
    country: Option<String>,
    state: Option<String>,
    locality: Option<String>,
    organization: Option<String>,
    organizational_unit: Option<String>,
}

// Upper bounds from RFC 5280 Appendix A.1 (ub-common-name and friends).
const UB_COMMON_NAME: usize = 64;
const UB_STATE_NAME: usize = 128;
const UB_LOCALITY_NAME: usize = 128;
const UB_ORGANIZATION_NAME: usize = 64;
const UB_ORGANIZATIONAL_UNIT_NAME: usize = 64;

impl Subject {
    /// A subject with this common name (1 to 64 characters).
    pub fn new(common_name: impl Into<String>) -> Result<Self> {
        let common_name = common_name.into();
        if common_name.trim().is_empty() {
            return Err(Error::EmptyCommonName);
        }
        let common_name = checked("commonName", common_name, UB_COMMON_NAME)?;
        Ok(Self {
            common_name,
            country: None,
            state: None,
            locality: None,
            organization: None,
            organizational_unit: None,
        })
    }

    /// Sets the country: two ASCII letters (ISO 3166), stored upper-case.
    pub fn country(mut self, country: &str) -> Result<Self> {
        if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(Error::InvalidSubjectAttribute {
                attribute: "countryName",
                value: country.to_owned(),
                reason: "must be two letters (ISO 3166), e.g. US",
            });
        }
        self.country = Some(country.to_ascii_uppercase());
        Ok(self)
    }

    /// Sets the state or province (at most 128 characters).
    pub fn state(mut self, state: impl Into<String>) -> Result<Self> {
        self.state = Some(checked("stateOrProvinceName", state.into(), UB_STATE_NAME)?);
        Ok(self)
    }

    /// Sets the locality (at most 128 characters).
    pub fn locality(mut self, locality: impl Into<String>) -> Result<Self> {
        self.locality = Some(checked("localityName", locality.into(), UB_LOCALITY_NAME)?);
        Ok(self)
    }

    /// Sets the organization (at most 64 characters).
    pub fn organization(mut self, organization: impl Into<String>) -> Result<Self> {
        self.organization = Some(checked(
            "organizationName",
            organization.into(),
            UB_ORGANIZATION_NAME,
        )?);
        Ok(self)
    }

    /// Sets the organizational unit (at most 64 characters).
    pub fn organizational_unit(mut self, unit: impl Into<String>) -> Result<Self> {
        self.organizational_unit = Some(checked(
            "organizationalUnitName",
            unit.into(),
            UB_ORGANIZATIONAL_UNIT_NAME,
        )?);
        Ok(self)
    }

    /// Reads a subject from an X.509 name, such as the one a CSR asks for:
    /// the attributes C, ST, L, O, OU and CN, each at most once, each a
    /// `UTF8String` or `PrintableString` (RFC 5280 section 4.1.2.6) that
    /// passes the same checks as the setters above. Anything else (another
    /// attribute, invalid UTF-8, an over-long value) is an error rather than
    /// something a CA would copy into a certificate.
    pub fn from_name(name: &Name) -> Result<Self> {
        let mut values: [Option<String>; 6] = Default::default();
        for atv in name.iter() {
            let Some(slot) = ATTRIBUTES.iter().position(|(oid, _)| *oid == atv.oid) else {
                return Err(Error::InvalidSubjectAttribute {
                    attribute: "subject",
                    value: atv.oid.to_string(),
                    reason: "is not an attribute this CA issues (C, ST, L, O, OU, CN)",
                });
            };
            let attribute = ATTRIBUTES[slot].1;
            let value = directory_string(attribute, &atv.value)?;
            if values[slot].replace(value).is_some() {
                return Err(Error::InvalidSubjectAttribute {
                    attribute,
                    value: String::new(),
                    reason: "appears more than once",
                });
            }
        }
        let [c, st, l, o, ou, cn] = values;
        let mut subject = Self::new(cn.ok_or(Error::EmptyCommonName)?)?;
        if let Some(c) = c {
            subject = subject.country(&c)?;
        }
        if let Some(st) = st {
            subject = subject.state(st)?;
        }
        if let Some(l) = l {
            subject = subject.locality(l)?;
        }
        if let Some(o) = o {
            subject = subject.organization(o)?;
        }
        if let Some(ou) = ou {
            subject = subject.organizational_unit(ou)?;
        }
        Ok(subject)
    }

    /// The common name.
    pub fn common_name(&self) -> &str {
        &self.common_name
    }

    /// The country, if set.
    pub fn country_name(&self) -> Option<&str> {
        self.country.as_deref()
    }

    /// The organization, if set.
    pub fn organization_name(&self) -> Option<&str> {
        self.organization.as_deref()
    }

    /// The X.509 name, in the order C, ST, L, O, OU, CN.
    pub fn to_name(&self) -> Result<Name> {
        let mut rdns = RdnSequence::default();
        if let Some(c) = &self.country {
            let value = PrintableStringRef::new(c)
                .and_then(|s| Any::encode_from(&s))
                .map_err(|e| Error::malformed("countryName", e))?;
            rdns.push(rdn(rfc4519::C, value)?);
        }
        let utf8 = [
            (rfc4519::ST, &self.state),
            (rfc4519::L, &self.locality),
            (rfc4519::O, &self.organization),
            (rfc4519::OU, &self.organizational_unit),
        ];
        for (oid, value) in utf8 {
            if let Some(v) = value {
                rdns.push(rdn(oid, utf8_any(v)?)?);
            }
        }
        rdns.push(rdn(rfc4519::CN, utf8_any(&self.common_name)?)?);
        // Every attribute was validated above, so the sequence meets RFC 5280;
        // that is what `hazmat` asks of the caller.
        Ok(Name::hazmat_from_rdn_sequence(rdns))
    }
}

/// RFC 4514 form, most specific first, as OpenSSL prints with `-nameopt RFC2253`.
impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_name() {
            Ok(name) => write!(f, "{name}"),
            Err(_) => write!(f, "CN={}", self.common_name),
        }
    }
}

/// The attributes [`Subject::from_name`] reads, in the order of its slots.
const ATTRIBUTES: [(ObjectIdentifier, &str); 6] = [
    (rfc4519::C, "countryName"),
    (rfc4519::ST, "stateOrProvinceName"),
    (rfc4519::L, "localityName"),
    (rfc4519::O, "organizationName"),
    (rfc4519::OU, "organizationalUnitName"),
    (rfc4519::CN, "commonName"),
];

/// The text of a `UTF8String` or `PrintableString` attribute value.
fn directory_string(attribute: &'static str, value: &Any) -> Result<String> {
    let bytes = value.value();
    let invalid = |reason| Error::InvalidSubjectAttribute {
        attribute,
        value: shortened(String::from_utf8_lossy(bytes).into_owned()),
        reason,
    };
    match value.tag() {
        der::Tag::Utf8String => std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| invalid("is not valid UTF-8")),
        der::Tag::PrintableString => PrintableStringRef::new(bytes)
            .map(|s| s.as_str().to_owned())
            .map_err(|_| invalid("holds characters a PrintableString may not")),
        _ => Err(invalid(
            "is neither a UTF8String nor a PrintableString (RFC 5280 section 4.1.2.6)",
        )),
    }
}

/// A value short enough to quote in an error message.
fn shortened(mut value: String) -> String {
    const SHOWN: usize = 80;
    if let Some((cut, _)) = value.char_indices().nth(SHOWN) {
        value.truncate(cut);
        value.push('…');
    }
    value
}

fn checked(attribute: &'static str, value: String, max: usize) -> Result<String> {
    let len = value.chars().count();
    if len == 0 || value.trim().is_empty() {
        return Err(Error::InvalidSubjectAttribute {
            attribute,
            value,
            reason: "must not be empty",
        });
    }
    if len > max {
        return Err(Error::SubjectAttributeTooLong {
            attribute,
            value: shortened(value),
            len,
            max,
        });
    }
    if value.chars().any(char::is_control) {
        return Err(Error::InvalidSubjectAttribute {
            attribute,
            value: shortened(value),
            reason: "must not contain control characters",
        });
    }
    Ok(value)
}

fn utf8_any(value: &str) -> Result<Any> {
    Utf8StringRef::new(value)
        .and_then(|s| Any::encode_from(&s))
        .map_err(|e| Error::malformed("subject attribute", e))
}

fn rdn(oid: ObjectIdentifier, value: Any) -> Result<RelativeDistinguishedName> {
    let set = SetOfVec::try_from(vec![AttributeTypeAndValue { oid, value }])
        .map_err(|e| Error::malformed("subject", e))?;
    Ok(RelativeDistinguishedName::from(set))
}

/// The common name of an X.509 name, if it has one.
pub(crate) fn common_name_of(name: &Name) -> Option<String> {
    name.common_name()
        .ok()
        .flatten()
        .map(|cn| cn.value().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use der::Encode;

    #[test]
    fn orders_attributes_conventionally() {
        let s = Subject::new("dev")
            .unwrap()
            .organizational_unit("ops")
            .unwrap()
            .organization("Org")
            .unwrap()
            .locality("Town")
            .unwrap()
            .state("State")
            .unwrap()
            .country("de")
            .unwrap();
        let name = s.to_name().unwrap();
        let oids: Vec<_> = name.iter().map(|a| a.oid).collect();
        assert_eq!(
            oids,
            [
                rfc4519::C,
                rfc4519::ST,
                rfc4519::L,
                rfc4519::O,
                rfc4519::OU,
                rfc4519::CN
            ]
        );
        assert_eq!(s.country_name(), Some("DE"));
        assert_eq!(common_name_of(&name).as_deref(), Some("dev"));
    }

    #[test]
    fn enforces_upper_bounds() {
        assert!(Subject::new("x".repeat(64)).is_ok());
        let err = Subject::new("x".repeat(65)).unwrap_err();
        assert!(
            matches!(
                err,
                Error::SubjectAttributeTooLong {
                    max: 64,
                    len: 65,
                    ..
                }
            ),
            "{err}"
        );
        let ok = Subject::new("a").unwrap();
        assert!(ok.clone().locality("l".repeat(128)).is_ok());
        assert!(ok.clone().locality("l".repeat(129)).is_err());
        assert!(ok.clone().organization("o".repeat(65)).is_err());
        assert!(ok.clone().country("1A").is_err());
        assert!(ok.clone().organization("").is_err());
        assert!(ok.organization("bad\nname").is_err());
        assert!(matches!(Subject::new("  "), Err(Error::EmptyCommonName)));
    }

    #[test]
    fn counts_characters_not_bytes() {
        // 64 two-byte characters are within ub-common-name.
        assert!(Subject::new("é".repeat(64)).is_ok());
    }

    #[test]
    fn special_characters_round_trip_through_der() {
        let s = Subject::new("a,b+c=\"d\"").unwrap();
        let der = s.to_name().unwrap().to_der().unwrap();
        let back = <Name as der::Decode>::from_der(&der).unwrap();
        assert_eq!(common_name_of(&back).as_deref(), Some("a,b+c=\"d\""));
    }
}
