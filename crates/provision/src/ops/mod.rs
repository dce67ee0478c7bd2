//! The CA operations behind the commands: create the CA (a root, and an
//! intermediate under it), issue, make and sign CSRs, revoke, and write
//! CRLs.

mod ca;
mod issue;
mod revoke;
mod sign;

pub use ca::{
    InitCa, InitIntermediate, IntermediateCreated, MIN_PASSPHRASE, init_ca, init_ca_archiving,
    init_intermediate,
};
pub use issue::{
    CsrRequest, IdentityPaths, IssueRequest, IssuedIdentity, SubjectOptions, cert_file_pem, issue,
    issue_files, make_csr,
};
pub(crate) use revoke::signed_by;
pub use revoke::{Change, Revocation, RevokeTarget, crl_due, revoke, when, write_crl};
pub use sign::{SignRequest, SignedCsr, sign_csr};
