//! [`Committed`]: what a transaction changed, for the brokers.

use pki_core::{Crl, RevocationReason, Serial};

use crate::roles::Role;

/// What one committed [`super::LockedCa`] changed that the brokers must
/// learn: [`crate::broker::apply`] takes it to every broker folder.
#[derive(Debug, Clone, Default)]
#[must_use = "take it to the brokers: crate::broker::apply"]
pub struct Committed {
    /// Certificates revoked, or whose revocation reason changed, with the
    /// reason they have now.
    pub revoked: Vec<(Serial, RevocationReason)>,
    /// How many certificates were recorded (issued or imported).
    pub recorded: u64,
    /// Identities recorded with a role other than device (their names
    /// appear in a broker's `acl_file`), with the role.
    pub roles: Vec<(String, Role)>,
    /// The CRL signed into the CA folder, if one was.
    pub crl: Option<Crl>,
    /// Settings the brokers read changed (the topic rules, a broker folder
    /// added).
    pub settings: bool,
}

impl Committed {
    /// Whether nothing a broker reads changed.
    pub fn is_empty(&self) -> bool {
        self.revoked.is_empty()
            && self.roles.is_empty()
            && self.crl.is_none()
            && !self.settings
            && self.recorded == 0
    }
}
