//! A device's lifecycle over MQTT, the device side: enrollment with a
//! shared claim certificate ([`enroll()`]) and renewal of a live identity
//! ([`Renewer`]), on the `pki/v1` protocol that `provision serve` answers
//! (`docs/lifecycle.md`). The private key never leaves the device: it
//! sends a CSR and gets a certificate back.
//!
//! The wire types ([`EnrollRequest`], [`RenewRequest`], [`RenewDone`],
//! [`Answer`]) and the topics ([`topics`]) are shared with the service.
//!
//! One concept a module: the wire types and topics (`protocol`), enrollment
//! (`enroll`), renewal and the replacement of the files (`renew`), the
//! answer checked (`issued`), the device's files written atomically
//! (`files`). [`Rejection`] is defined beside the crate's `Error`, which
//! carries it.

mod enroll;
mod files;
mod issued;
mod protocol;
mod renew;

pub use self::enroll::{Enrollment, enroll};
pub use self::protocol::{
    Answer, EnrollRequest, RenewDone, RenewRequest, RequestId, VERSION, topics,
};
pub use self::renew::{RenewOptions, Renewed, Renewer, settle};
pub use crate::error::Rejection;
