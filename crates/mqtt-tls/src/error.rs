//! The one error type of this crate, and [`Rejection`], the CA service's
//! reason for refusing a request, which [`Error::Rejected`] carries.

use std::fmt;
use std::path::PathBuf;
use std::time::SystemTime;

use pki_core::Timestamp;
use serde::{Deserialize, Serialize};

/// Everything that can go wrong loading a client bundle or talking to the
/// broker. Each variant names the file or the peer at fault, and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file cannot be written (enrollment, renewal).
    #[error("writing {path}: {source}")]
    WriteFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The CA service refused an enrollment or renewal.
    #[error("the CA service refused: {reason}: {detail}")]
    Rejected {
        /// Why, for programs.
        reason: Rejection,
        /// Why, for people.
        detail: String,
    },

    /// The CA service did not answer in time.
    #[error(
        "no answer on {topic} within {waited:?}: is `provision serve` running, and may this identity publish its request (the broker's ACL)?"
    )]
    NoAnswer {
        /// The topic the answer was awaited on.
        topic: String,
        /// How long.
        waited: std::time::Duration,
    },

    /// Enrolling would replace a key or certificate that exists, and the
    /// request did not ask to ([`Enrollment::force`](crate::lifecycle::Enrollment::force)).
    /// Nothing was sent.
    #[error(
        "{} exists; enrolling would replace it (nothing was sent): ask for replacing it, or enroll into another folder",
        path.display()
    )]
    WouldReplace {
        /// The file that exists.
        path: PathBuf,
    },

    /// An enrollment or renewal step failed.
    #[error("{reason}")]
    Lifecycle {
        /// What failed.
        reason: String,
    },

    /// A file of the bundle cannot be read.
    #[error("reading {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A file holds no PEM certificate.
    #[error("{path}: no certificate found (expected a PEM `BEGIN CERTIFICATE` block)")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },

    /// A file holds no usable private key.
    #[error("{path}: {reason}")]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A certificate file that does not parse.
    #[error("{path}: {reason}")]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The key is not the certificate's.
    #[error("{key_path}: key does not match certificate {cert_path}")]
    KeyMismatch {
        /// The key file.
        key_path: PathBuf,
        /// The certificate file.
        cert_path: PathBuf,
    },

    /// The client certificate's validity has not started.
    #[error("{path}: certificate is not valid before {} (now {})", Timestamp(*not_before), Timestamp(*now))]
    NotYetValid {
        /// The certificate file.
        path: PathBuf,
        /// Its `notBefore`.
        not_before: SystemTime,
        /// The time of the check.
        now: SystemTime,
    },

    /// The client certificate has expired.
    #[error("{path}: certificate expired at {} (now {})", Timestamp(*not_after), Timestamp(*now))]
    Expired {
        /// The certificate file.
        path: PathBuf,
        /// Its `notAfter`.
        not_after: SystemTime,
        /// The time of the check.
        now: SystemTime,
    },

    /// The client certificate was not issued by the CA in the bundle.
    #[error("{cert_path}: not issued by the CA in {ca_path}: {reason}")]
    NotIssuedByCa {
        /// The certificate file.
        cert_path: PathBuf,
        /// The CA file.
        ca_path: PathBuf,
        /// Why not.
        reason: String,
    },

    /// The client certificate may not be used for TLS client authentication.
    #[error(
        "{path}: certificate is not a client certificate ({reason}); issue one with the client profile"
    )]
    NotClientCertificate {
        /// The certificate file.
        path: PathBuf,
        /// What its usage says.
        reason: String,
    },

    /// rustls refused the configuration.
    #[error("TLS configuration: {reason}")]
    TlsConfig {
        /// What rustls said.
        reason: String,
    },

    /// The broker host is neither a DNS name nor an IP address.
    #[error("invalid broker host {host:?}: {reason}")]
    InvalidHost {
        /// The host.
        host: String,
        /// Why.
        reason: String,
    },

    /// A connection option out of its range.
    #[error("invalid option {option}: {reason}")]
    InvalidOption {
        /// The option (a `ConnectOptions` field).
        option: &'static str,
        /// Why, with the range.
        reason: String,
    },

    /// The broker's host name does not resolve.
    #[error("cannot resolve broker host {host}: {reason}")]
    Dns {
        /// The host.
        host: String,
        /// The resolver's error.
        reason: String,
    },

    /// Nothing listens at the broker address.
    #[error("connection to {host}:{port} refused: is the broker running and listening there?")]
    ConnectionRefused {
        /// The host.
        host: String,
        /// The port.
        port: u16,
    },

    /// The broker's certificate does not name the host we dialled.
    #[error("the broker's certificate is not valid for {host} (it names: {}); dial one of those names or reissue the broker certificate with --dns/--ip", if names.is_empty() { "nothing".to_owned() } else { names.join(", ") })]
    ServerNameMismatch {
        /// The host we dialled.
        host: String,
        /// The names in its certificate.
        names: Vec<String>,
    },

    /// The broker's certificate does not chain to our CA, or is otherwise
    /// unacceptable.
    #[error("the broker's certificate is not trusted: {reason}")]
    ServerCertificate {
        /// Why.
        reason: String,
    },

    /// The broker rejected our client certificate during the handshake.
    #[error("the broker rejected our client certificate ({alert}): {hint}")]
    ClientCertificateRejected {
        /// The TLS alert it sent.
        alert: String,
        /// What that usually means.
        hint: &'static str,
    },

    /// Another TLS failure.
    #[error("TLS with {host}:{port} failed: {reason}")]
    Tls {
        /// The host.
        host: String,
        /// The port.
        port: u16,
        /// What rustls said.
        reason: String,
    },

    /// The broker answered CONNECT with a refusal.
    #[error("the broker refused the MQTT connection: {reason}")]
    BrokerRefused {
        /// The CONNACK return code.
        reason: String,
    },

    /// Any other network or protocol failure.
    #[error("connection to {host}:{port} lost: {reason}")]
    Connection {
        /// The host.
        host: String,
        /// The port.
        port: u16,
        /// The underlying error.
        reason: String,
    },

    /// The connection went while this publish waited for a packet id to
    /// free up, and the broker then started a new session: it was never
    /// sent, nobody received it. Send it again (no duplicate can follow).
    /// (A publish not written yet otherwise simply goes out on the new
    /// session.)
    #[error(
        "the broker started a new session before this publish was sent: it was never sent; \
         send it again"
    )]
    SessionLost,

    /// The connection went after this publish was written and before the
    /// broker acknowledged it, and the broker then started a new session:
    /// it may or may not have been passed on. Sending it again is at least
    /// once (a subscriber may get it twice); not sending it is at most
    /// once. For exactly once across such a loss, give messages an id the
    /// receiver deduplicates on.
    #[error(
        "the broker started a new session after this publish was sent and before it was \
         acknowledged: it may or may not have been delivered"
    )]
    DeliveryUnknown,

    /// The broker is not connected and as many publishes as
    /// [`crate::ConnectOptions::max_offline_queue`] allows already wait for it.
    #[error(
        "the broker is not connected and {limit} publishes already wait for it \
         (ConnectOptions::max_offline_queue); try again later"
    )]
    OfflineQueueFull {
        /// The limit.
        limit: usize,
    },

    /// A publish larger than the outgoing packet-size limit
    /// ([`crate::ConnectOptions::max_outgoing_packet_size`]); refused before
    /// anything was queued.
    #[error(
        "publishing to {topic:?}: the packet would be {size} bytes, more than the outgoing limit of {max} bytes (raise max_outgoing_packet_size; the broker has its own limit too)"
    )]
    PacketTooLarge {
        /// The topic.
        topic: String,
        /// The size of the whole PUBLISH packet.
        size: usize,
        /// The limit.
        max: usize,
    },

    /// The broker refused a subscription (SUBACK 0x80): usually its ACL
    /// does not let our identity read there.
    #[error("the broker refused the subscription to {filter:?} (check its ACL for our identity)")]
    SubscriptionRefused {
        /// The filter.
        filter: String,
    },

    /// The client was shut down (or its event loop stopped).
    #[error("the MQTT client is shut down")]
    Closed,

    /// A topic or filter that MQTT does not allow.
    #[error("invalid MQTT topic {topic:?}: {reason}")]
    InvalidTopic {
        /// The topic or filter.
        topic: String,
        /// Why.
        reason: &'static str,
    },

    /// A QoS that is not 0, 1 or 2.
    #[error("QoS must be 0, 1 or 2, not {value}")]
    InvalidQos {
        /// What was given.
        value: String,
    },

    /// A share group that is not one topic level (MQTT 5 section 4.8.2).
    #[error("invalid share group {group:?}: one topic level, without '/', '+' or '#'")]
    InvalidShareGroup {
        /// The group.
        group: String,
    },
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// [`Error::Lifecycle`]: an enrollment or renewal step failed.
    pub(crate) fn lifecycle(reason: impl Into<String>) -> Self {
        Self::Lifecycle {
            reason: reason.into(),
        }
    }

    /// [`Error::Lifecycle`]: `what` failed in pki-core with `e`.
    pub(crate) fn lifecycle_pki(what: &str, e: pki_core::Error) -> Self {
        Self::lifecycle(format!("{what}: {e}"))
    }
}

/// For conversions that cannot fail, such as a [`TopicFilter`](crate::TopicFilter)
/// given where anything that converts into one is taken.
impl From<std::convert::Infallible> for Error {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

/// Why the CA service refused an enrollment or renewal: the reason of
/// [`Error::Rejected`], and on the wire in
/// [`lifecycle::Answer`](crate::lifecycle::Answer) (`docs/lifecycle.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Rejection {
    /// The request is not valid JSON of the right shape.
    BadRequest,
    /// The requester is not a claim this CA issued (enrollment).
    NotAClaim,
    /// The claim's policy has ended.
    ClaimExpired,
    /// The claim's policy does not allow this name.
    NameNotAllowed,
    /// The name already has a valid certificate.
    AlreadyEnrolled,
    /// The claim enrolled as many devices as it may.
    QuotaExhausted,
    /// The CSR does not verify, or its subject or key is not acceptable.
    BadCsr,
    /// The current certificate is not one this CA issued.
    UnknownCertificate,
    /// The current certificate is revoked, expired or superseded.
    NotCurrent,
    /// The names do not agree (topic, certificate, CSR).
    NameMismatch,
    /// The proof is not the current key's signature over the CSR.
    BadProof,
}

impl Rejection {
    /// Its name on the wire.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::NotAClaim => "not_a_claim",
            Self::ClaimExpired => "claim_expired",
            Self::NameNotAllowed => "name_not_allowed",
            Self::AlreadyEnrolled => "already_enrolled",
            Self::QuotaExhausted => "quota_exhausted",
            Self::BadCsr => "bad_csr",
            Self::UnknownCertificate => "unknown_certificate",
            Self::NotCurrent => "not_current",
            Self::NameMismatch => "name_mismatch",
            Self::BadProof => "bad_proof",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
