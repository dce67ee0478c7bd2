//! The revoked serials the plugin enforces, read from the broker's CRL
//! file (the one its `crlfile` names, which `provision` rewrites).
//!
//! The file is trusted as the broker's configuration is (Mosquitto checks
//! its signature itself when it loads it for handshakes); what matters
//! here is which serials it lists and why. Serials are compared alone: a
//! broker trusts one CA, whose serials are 20 random octets.

use std::collections::HashMap;
use std::path::Path;

use pki_core::RevocationReason;

use crate::error::{Error, Result};

/// The serials listed in a CRL file, with whether each was superseded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revoked {
    serials: HashMap<Box<[u8]>, bool>,
}

impl Revoked {
    /// Nothing revoked.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads every `X509 CRL` block of a CRL file's text; `path` names it
    /// in errors. A file without a CRL, or with one that does not parse,
    /// is an error: the plugin then refuses everything.
    pub fn from_pem(text: &str, path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::Crl {
            path: path.to_owned(),
            reason,
        };
        let blocks = pem::parse_many(text).map_err(|e| bad(format!("not PEM: {e}")))?;
        let mut revoked = Self::new();
        let mut crls = 0;
        for block in blocks.iter().filter(|b| b.tag() == "X509 CRL") {
            let crl = pki_core::Crl::from_der(block.contents().to_vec())
                .map_err(|e| bad(format!("a CRL that does not parse: {e}")))?;
            crls += 1;
            for entry in crl.entries() {
                let superseded = entry.reason == RevocationReason::Superseded;
                // Listed twice (two CRLs): any reason but superseded wins.
                revoked
                    .serials
                    .entry(entry.serial.as_bytes().into())
                    .and_modify(|s| *s &= superseded)
                    .or_insert(superseded);
            }
        }
        if crls == 0 {
            return Err(bad("no X509 CRL block".into()));
        }
        Ok(revoked)
    }

    /// Adds `serial` (tests, and CRLs built by hand).
    pub fn insert(&mut self, serial: &[u8], reason: RevocationReason) {
        self.serials
            .insert(serial.into(), reason == RevocationReason::Superseded);
    }

    /// How many serials are listed.
    pub fn len(&self) -> usize {
        self.serials.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.serials.is_empty()
    }

    /// Whether a connection with this certificate serial is refused and
    /// taken off: listed for any reason but `superseded`. A superseded
    /// certificate (a renewal) keeps its live connection, which moves to
    /// the new certificate at its own pace; its next handshake fails at the
    /// broker's `crlfile`.
    pub fn refuses(&self, serial: &[u8]) -> bool {
        self.serials
            .get(serial)
            .is_some_and(|superseded| !superseded)
    }
}
