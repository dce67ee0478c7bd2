//! The `pki/v1` protocol's wire types and topics, shared with
//! `provision serve` (`docs/lifecycle.md`): what a device publishes
//! ([`EnrollRequest`], [`RenewRequest`], [`RenewDone`]), what the service
//! answers ([`Answer`]), and where ([`topics`]).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::Rejection;

/// The protocol's version, the first two levels of every topic.
pub const VERSION: &str = "pki/v1";

/// The topics of the protocol. `{claim}` and `{name}` are the MQTT
/// username (the certificate's CN) of the requester, which the broker's
/// ACL holds it to.
pub mod topics {
    /// What the CA service subscribes to for enrollments.
    pub const ENROLL_REQUESTS: &str = "pki/v1/enroll/+/req";
    /// What the CA service subscribes to for renewals.
    pub const RENEW_REQUESTS: &str = "pki/v1/renew/+/req";
    /// What the CA service subscribes to for confirmations.
    pub const RENEW_DONE: &str = "pki/v1/renew/+/done";

    /// Where a device holding the claim `claim` asks to enroll.
    pub fn enroll_request(claim: &str) -> String {
        format!("pki/v1/enroll/{claim}/req")
    }
    /// Where the answer to enrollment request `request_id` comes.
    pub fn enroll_response(claim: &str, request_id: &str) -> String {
        format!("pki/v1/enroll/{claim}/res/{request_id}")
    }
    /// Where device `name` asks to renew.
    pub fn renew_request(name: &str) -> String {
        format!("pki/v1/renew/{name}/req")
    }
    /// Where the answer to renewal request `request_id` comes.
    pub fn renew_response(name: &str, request_id: &str) -> String {
        format!("pki/v1/renew/{name}/res/{request_id}")
    }
    /// Every answer for device `name`.
    pub fn renew_responses(name: &str) -> String {
        format!("pki/v1/renew/{name}/res/+")
    }
    /// Where device `name` says it is connected with its new certificate.
    pub fn renew_done(name: &str) -> String {
        format!("pki/v1/renew/{name}/done")
    }

    /// The requester (`{claim}` or `{name}`) and the kind (`enroll`,
    /// `renew`) and last level (`req`, `done`) of a request topic.
    pub fn parse(topic: &str) -> Option<(&str, &str, &str)> {
        let rest = topic.strip_prefix("pki/v1/")?;
        let mut levels = rest.split('/');
        let (kind, who, what) = (levels.next()?, levels.next()?, levels.next()?);
        (levels.next().is_none() && !who.is_empty()).then_some((kind, who, what))
    }
}

/// A request's id: 1 to 64 of `A-Z a-z 0-9 _ -` (it is a topic level).
/// The same id gets the same answer, however often it is sent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RequestId(String);

impl RequestId {
    /// A fresh random id (128 bits from the system's secure generator,
    /// hex): nobody can guess another device's id and answer for it first.
    pub fn random() -> Self {
        let mut bytes = [0u8; 16];
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        if provider.secure_random.fill(&mut bytes).is_err() {
            // Never seen; the id is still unique in practice.
            bytes = fastrand::u128(..).to_be_bytes();
        }
        Self(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RequestId {
    type Error = String;

    fn try_from(s: String) -> std::result::Result<Self, String> {
        let ok = (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(s))
        } else {
            Err("a request_id is 1 to 64 of A-Z a-z 0-9 _ -".into())
        }
    }
}

impl From<RequestId> for String {
    fn from(id: RequestId) -> Self {
        id.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Enrollment: published on [`topics::enroll_request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The request's id; the answer comes on [`topics::enroll_response`].
    pub request_id: RequestId,
    /// The device name to enroll (the new certificate's CN).
    pub name: String,
    /// The CSR (PEM), its subject's CN the name.
    pub csr: String,
}

/// Renewal: published on [`topics::renew_request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// The request's id; the answer comes on [`topics::renew_response`].
    pub request_id: RequestId,
    /// The serial (hex) of the current certificate.
    pub serial: String,
    /// The current certificate (PEM), whose key made `proof`.
    pub certificate: String,
    /// The CSR (PEM) for the new key, its CN the device name.
    pub csr: String,
    /// The current key's signature over the CSR's DER, base64.
    pub proof: String,
}

/// Published on [`topics::renew_done`] once connected with the new
/// certificate: the service then revokes the old one (superseded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewDone {
    /// The renewal request's id.
    pub request_id: RequestId,
    /// The new certificate's serial (hex).
    pub serial: String,
}

/// The service's answer to a request, the same for every copy of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Answer {
    /// A certificate was issued.
    Issued {
        /// The request's id.
        request_id: RequestId,
        /// The new certificate's serial (hex).
        serial: String,
        /// The new certificate, then any intermediate CA (PEM).
        certificate: String,
    },
    /// The request was refused.
    Rejected {
        /// The request's id (empty when the request could not be read).
        request_id: String,
        /// Why, for programs.
        reason: Rejection,
        /// Why, for people.
        detail: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_topic_levels() {
        assert!(RequestId::try_from("abc-DEF_09".to_owned()).is_ok());
        for bad in ["", "a/b", "a+b", "#", &"x".repeat(65)] {
            assert!(RequestId::try_from(bad.to_owned()).is_err(), "{bad:?}");
        }
        assert_eq!(RequestId::random().as_str().len(), 32);
    }

    #[test]
    fn answers_round_trip_with_a_status_tag() {
        let a = Answer::Rejected {
            request_id: "r1".into(),
            reason: Rejection::QuotaExhausted,
            detail: "3 of 3".into(),
        };
        let text = serde_json::to_string(&a).unwrap();
        assert!(text.contains(r#""status":"rejected""#), "{text}");
        assert!(text.contains(r#""reason":"quota_exhausted""#), "{text}");
        assert_eq!(serde_json::from_str::<Answer>(&text).unwrap(), a);
    }

    #[test]
    fn topics_parse_back() {
        assert_eq!(
            topics::parse(&topics::renew_request("s-1")),
            Some(("renew", "s-1", "req"))
        );
        assert_eq!(topics::parse("pki/v1/renew/s-1/res/x"), None);
    }
}
