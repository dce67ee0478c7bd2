//! Certificate serial numbers (RFC 5280 section 4.1.2.2).

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use x509_cert::serial_number::SerialNumber;

use crate::error::{Error, Result};

/// A certificate serial number: a positive integer of at most 20 octets.
///
/// [`Serial::random`] gives 159 random bits, so two certificates from one CA
/// never share a serial in practice, and serials reveal nothing about order
/// or count. Displayed as upper-case hex, as `openssl x509 -serial` does.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial(Vec<u8>);

/// The RFC 5280 limit on serial number length.
pub const MAX_SERIAL_OCTETS: usize = 20;

impl Serial {
    /// A fresh random serial: 20 octets, positive, non-zero, with no
    /// leading zero octet (so it encodes in exactly 20 octets).
    pub fn random() -> Result<Self> {
        let mut bytes = vec![0u8; MAX_SERIAL_OCTETS];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| Error::Crypto {
                operation: "random serial",
            })?;
        // Clear the sign bit: a DER INTEGER with it set would be negative.
        bytes[0] &= 0x7f;
        if bytes[0] == 0 {
            bytes[0] = 0x01;
        }
        Ok(Self(bytes))
    }

    /// A serial from big-endian bytes; leading zeros are dropped.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
        let trimmed = &bytes[start..];
        if trimmed.is_empty() {
            return Err(Error::malformed("serial number", "zero is not allowed"));
        }
        if trimmed.len() > MAX_SERIAL_OCTETS {
            return Err(Error::malformed(
                "serial number",
                format!(
                    "{} octets, at most {MAX_SERIAL_OCTETS} allowed",
                    trimmed.len()
                ),
            ));
        }
        Ok(Self(trimmed.to_vec()))
    }

    /// The big-endian bytes, without leading zeros.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub(crate) fn to_x509(&self) -> Result<SerialNumber> {
        SerialNumber::new(&self.0).map_err(|e| Error::malformed("serial number", e))
    }

    pub(crate) fn from_x509(s: &SerialNumber) -> Self {
        let bytes = s.as_bytes();
        let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
        Self(bytes[start..].to_vec())
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

/// Parses hex, with or without colons and a `0x` prefix, in either case.
impl FromStr for Serial {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let hex: String = s
            .trim()
            .trim_start_matches("0x")
            .chars()
            .filter(|c| *c != ':')
            .collect();
        if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Error::malformed(
                "serial number",
                format!("{s:?} is not hex"),
            ));
        }
        let padded = if hex.len() % 2 == 1 {
            format!("0{hex}")
        } else {
            hex
        };
        let bytes: Vec<u8> = (0..padded.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&padded[i..i + 2], 16))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::malformed("serial number", e))?;
        Self::from_bytes(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_serials_are_positive_twenty_octets_and_distinct() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let s = Serial::random().unwrap();
            assert_eq!(s.as_bytes().len(), 20);
            assert!(s.as_bytes()[0] & 0x80 == 0 && s.as_bytes()[0] != 0);
            let x = s.to_x509().unwrap();
            assert_eq!(Serial::from_x509(&x), s);
            assert!(seen.insert(s));
        }
    }

    #[test]
    fn parses_hex_forms() {
        let s: Serial = "0x0A:bc".parse().unwrap();
        assert_eq!(s.as_bytes(), [0x0a, 0xbc]);
        assert_eq!(s.to_string(), "0ABC");
        assert_eq!("abc".parse::<Serial>().unwrap().as_bytes(), [0x0a, 0xbc]);
        assert!("".parse::<Serial>().is_err());
        assert!("00".parse::<Serial>().is_err());
        assert!("xyz".parse::<Serial>().is_err());
        assert!("ff".repeat(21).parse::<Serial>().is_err());
    }
}
