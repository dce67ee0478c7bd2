//! Who may do what on the broker: an identity's role (device, service,
//! reader), carried in its certificate and recorded in the inventory, and
//! the topic rules of each role, rendered as a Mosquitto `acl_file`.
//!
//! The role is a URI subject alternative name, `urn:mqtt-mtls:role:ROLE`,
//! granted only by the CA (a CSR asking for one is refused), so a service
//! can read it from a client certificate without the CA folder.

use std::fmt;
use std::str::FromStr;

use pki_core::{Certificate, SubjectAltName};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The prefix of the role's URI SAN (the broker plugin's, which reads it).
pub use mosquitto_auth::ROLE_URI_PREFIX;

/// What an identity is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A device: its own topics (`devices/NAME/#`) and the broadcast, read
    /// only (by default).
    #[default]
    Device,
    /// A backend service (the ingest, say): reads every device, writes the
    /// broadcast (by default).
    Service,
    /// Reads data over HTTPS (the ingest's API); nothing on the broker by
    /// default.
    Reader,
    /// A claim certificate, shared by devices leaving the factory: it may
    /// only ask to enroll (`pki/v1/enroll/CLAIM/req`, on the enrollment
    /// broker), within its policy; nothing on the main broker.
    Claim,
    /// The CA service (`provision serve`): reads enrollment and renewal
    /// requests and answers them.
    #[serde(rename = "ca-service")]
    CaService,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 5] = [
        Role::Device,
        Role::Service,
        Role::Reader,
        Role::Claim,
        Role::CaService,
    ];

    /// Its name: `device`, `service`, `reader`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Device => "device",
            Self::Service => "service",
            Self::Reader => "reader",
            Self::Claim => "claim",
            Self::CaService => "ca-service",
        }
    }

    /// The URI SAN that carries it.
    pub fn san(&self) -> Result<SubjectAltName> {
        Ok(SubjectAltName::uri(format!(
            "{ROLE_URI_PREFIX}{}",
            self.as_str()
        ))?)
    }

    /// The role a certificate carries (`None`: none, as certificates from
    /// before roles, or several, which the CA never issues).
    pub fn of(cert: &Certificate) -> Option<Role> {
        let mut roles = cert
            .subject_alt_names()
            .ok()?
            .into_iter()
            .filter_map(|san| match san {
                SubjectAltName::Uri(u) => u
                    .as_str()
                    .strip_prefix(ROLE_URI_PREFIX)
                    .and_then(|r| r.parse::<Role>().ok()),
                _ => None,
            });
        let role = roles.next()?;
        roles.next().is_none().then_some(role)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| Error::InvalidName {
                name: s.to_owned(),
                reason: "a role is device, service, reader, claim or ca-service",
            })
    }
}

/// Whether a requested SAN claims a role (which only the CA grants).
pub fn claims_role(san: &SubjectAltName) -> bool {
    matches!(san, SubjectAltName::Uri(u) if u.as_str().starts_with(ROLE_URI_PREFIX))
}

/// One topic rule: `read`, `write`, `readwrite` or `deny`, then a topic
/// filter where `{name}` is the identity's name (its CN, the MQTT
/// username); or `share GROUP FILTER`, which lets the role join the shared
/// subscription group `$share/GROUP/...` with filters FILTER covers. The
/// broker plugin's own rule type ([`mosquitto_auth::Rule`]), so the
/// manifest and the broker read one syntax.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TopicRule(mosquitto_auth::Rule);

impl TryFrom<String> for TopicRule {
    type Error = String;

    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.trim()
            .parse::<mosquitto_auth::Rule>()
            .map(Self)
            .map_err(|e| e.to_string())
    }
}

impl From<TopicRule> for String {
    fn from(r: TopicRule) -> Self {
        r.0.to_string()
    }
}

impl TopicRule {
    fn parse(s: &str) -> Self {
        // Only for the built-in defaults, which are valid.
        Self::try_from(s.to_owned()).unwrap_or(Self(mosquitto_auth::Rule {
            access: mosquitto_auth::Access::Deny,
            filter: "#".into(),
        }))
    }

    /// The rule as the plugin reads it.
    pub fn rule(&self) -> &mosquitto_auth::Rule {
        &self.0
    }

    /// Its access as an `acl_file` spells it (`None`: a `share` rule,
    /// which an `acl_file` cannot express).
    fn acl_file_access(&self) -> Option<&'static str> {
        match self.0.access {
            mosquitto_auth::Access::Read => Some("read"),
            mosquitto_auth::Access::Write => Some("write"),
            mosquitto_auth::Access::ReadWrite => Some("readwrite"),
            mosquitto_auth::Access::Deny => Some("deny"),
            mosquitto_auth::Access::Share(_) => None,
        }
    }

    fn topic(&self) -> &str {
        &self.0.filter
    }
}

/// The topic rules of each role (`[acl]` in a fleet manifest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclPolicy {
    /// A device's rules.
    #[serde(default = "default_device")]
    pub device: Vec<TopicRule>,
    /// A service's rules.
    #[serde(default = "default_service")]
    pub service: Vec<TopicRule>,
    /// A reader's rules.
    #[serde(default)]
    pub reader: Vec<TopicRule>,
}

/// What every identity on the main broker may do to renew its own
/// certificate (`provision serve`, `docs/lifecycle.md`), whatever `[acl]`
/// says: ask, read the answer, confirm.
pub const RENEWAL_RULES: [&str; 3] = [
    "write pki/v1/renew/{name}/req",
    "read pki/v1/renew/{name}/res/+",
    "write pki/v1/renew/{name}/done",
];

/// The CA service's rules on the main broker: read every renewal request
/// and confirmation (through its shared subscription group `pki`: several
/// instances split the requests), answer each.
pub const CA_SERVICE_RULES: [&str; 5] = [
    "read pki/v1/renew/+/req",
    "read pki/v1/renew/+/done",
    "share pki pki/v1/renew/+/req",
    "share pki pki/v1/renew/+/done",
    "write pki/v1/renew/+/res/+",
];

/// The rules on the enrollment broker: a claim asks and reads its
/// answers, the CA service reads every request (in its group `pki`) and
/// answers.
pub const ENROLLMENT_RULES: [(Role, &[&str]); 2] = [
    (
        Role::Claim,
        &[
            "write pki/v1/enroll/{name}/req",
            "read pki/v1/enroll/{name}/res/+",
        ],
    ),
    (
        Role::CaService,
        &[
            "read pki/v1/enroll/+/req",
            "share pki pki/v1/enroll/+/req",
            "write pki/v1/enroll/+/res/+",
        ],
    ),
];

fn default_device() -> Vec<TopicRule> {
    vec![
        TopicRule::parse("readwrite devices/{name}/#"),
        TopicRule::parse("read fleet/broadcast/#"),
    ]
}

fn default_service() -> Vec<TopicRule> {
    vec![
        TopicRule::parse("read devices/#"),
        TopicRule::parse("write fleet/broadcast/#"),
        // The ingest's --share-group (docs/deployment.md).
        TopicRule::parse("share ingest devices/#"),
    ]
}

impl Default for AclPolicy {
    fn default() -> Self {
        Self {
            device: default_device(),
            service: default_service(),
            reader: Vec::new(),
        }
    }
}

impl AclPolicy {
    /// The rules of `role` on the main broker (a claim has none; the CA
    /// service's are fixed: [`CA_SERVICE_RULES`]).
    pub fn rules(&self, role: Role) -> Vec<TopicRule> {
        match role {
            Role::Device => self.device.clone(),
            Role::Service => self.service.clone(),
            Role::Reader => self.reader.clone(),
            Role::Claim => Vec::new(),
            Role::CaService => CA_SERVICE_RULES
                .iter()
                .map(|r| TopicRule::parse(r))
                .collect(),
        }
    }

    /// The enrollment broker's `acl_file`: each claim may publish its own
    /// requests and read their answers, the CA service reads every request
    /// and answers; nobody else may do anything (no pattern lines: a device
    /// connecting there gets nothing).
    pub fn enrollment_acl(others: &[(String, Role)]) -> String {
        let mut text = String::from(
            "# Generated by `provision` from the inventory's roles: the enrollment broker.\n\
             # Only claims and the CA service have rules here.\n",
        );
        for (name, role) in others {
            let Some((_, rules)) = ENROLLMENT_RULES.iter().find(|(r, _)| r == role) else {
                continue;
            };
            text.push_str(&format!("\n# {role}\nuser {name}\n"));
            for rule in rules.iter().map(|r| TopicRule::parse(r)) {
                if let Some(access) = rule.acl_file_access() {
                    text.push_str(&format!(
                        "topic {access} {}\n",
                        rule.topic().replace("{name}", name)
                    ));
                }
            }
        }
        text
    }

    /// The broker plugin's rules file for the main broker: each role's
    /// rules, and everyone's renewal rules ([`RENEWAL_RULES`]) but a
    /// claim's (a claim has nothing there). One file for every identity:
    /// issuing one changes nothing at the broker.
    pub fn broker_rules(&self) -> Result<mosquitto_auth::Rules> {
        let mut rules = mosquitto_auth::Rules::new();
        for role in Role::ALL {
            if role == Role::Claim {
                continue;
            }
            let mut list: Vec<mosquitto_auth::Rule> =
                self.rules(role).iter().map(|r| r.rule().clone()).collect();
            list.extend(RENEWAL_RULES.iter().map(|r| TopicRule::parse(r).0));
            rules.set(role.as_str(), list).map_err(rules_error)?;
        }
        Ok(rules)
    }

    /// The broker plugin's rules file for the enrollment broker
    /// ([`ENROLLMENT_RULES`]): claims and the CA service, nobody else.
    pub fn enrollment_rules() -> Result<mosquitto_auth::Rules> {
        let mut rules = mosquitto_auth::Rules::new();
        for (role, list) in ENROLLMENT_RULES {
            let list = list.iter().map(|r| TopicRule::parse(r).0).collect();
            rules.set(role.as_str(), list).map_err(rules_error)?;
        }
        Ok(rules)
    }

    /// A Mosquitto `acl_file`: the device rules as `pattern` lines (`%u`,
    /// the username, is the CN: one set of lines for every device), then a
    /// `user` section for each other identity with its role's rules.
    /// `pattern` lines apply to every user, so a service also has a
    /// device's rights on its own `devices/NAME/#`.
    pub fn mosquitto_acl(&self, others: &[(String, Role)]) -> String {
        let mut text = String::from(
            "# Generated by `provision` from the inventory's roles; rewritten when identities\n\
             # are issued or revoked. The username is the certificate's CN.\n\
             # Devices (pattern lines apply to every user):\n",
        );
        for rule in &self.device {
            if let Some(access) = rule.acl_file_access() {
                text.push_str(&format!(
                    "pattern {access} {}\n",
                    rule.topic().replace("{name}", "%u")
                ));
            }
        }
        text.push_str("# Everyone renews its own certificate (provision serve):\n");
        for rule in RENEWAL_RULES {
            text.push_str(&format!("pattern {}\n", rule.replace("{name}", "%u")));
        }
        for (name, role) in others {
            if *role == Role::Device {
                continue;
            }
            text.push_str(&format!("\n# {role}\nuser {name}\n"));
            // A reader's own rules only. Mosquitto checks a user's deny
            // lines first (before its allow lines and the patterns): with
            // no rules, deny all; with some, deny the device patterns as
            // they would apply to this name.
            // A claim does nothing here: it enrolls on the enrollment
            // broker.
            if *role == Role::Claim {
                text.push_str("topic deny #\n");
                continue;
            }
            if *role == Role::Reader {
                if self.reader.is_empty() {
                    text.push_str("topic deny #\n");
                } else {
                    for rule in &self.device {
                        text.push_str(&format!(
                            "topic deny {}\n",
                            rule.topic().replace("{name}", name)
                        ));
                    }
                }
            }
            for rule in &self.rules(*role) {
                if let Some(access) = rule.acl_file_access() {
                    text.push_str(&format!(
                        "topic {access} {}\n",
                        rule.topic().replace("{name}", name)
                    ));
                }
            }
        }
        text
    }
}

fn rules_error(e: mosquitto_auth::Error) -> Error {
    Error::Plugin {
        path: std::path::PathBuf::from("rules"),
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_checked() {
        for good in ["read devices/#", "readwrite devices/{name}/+/x", "deny #"] {
            assert!(TopicRule::try_from(good.to_owned()).is_ok(), "{good}");
        }
        for bad in [
            "read",
            "admin devices/#",
            "read devices/#/x",
            "read devices/a+b",
            "read devices/%c",
            "read {other}/x",
            "read a b",
        ] {
            assert!(TopicRule::try_from(bad.to_owned()).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_acl_file_has_patterns_for_devices_and_a_section_per_service() {
        let acl = AclPolicy::default().mosquitto_acl(&[
            ("ingest".into(), Role::Service),
            ("sensor-1".into(), Role::Device),
        ]);
        assert!(acl.contains("pattern readwrite devices/%u/#\n"), "{acl}");
        assert!(acl.contains("pattern read fleet/broadcast/#\n"), "{acl}");
        assert!(
            acl.contains("user ingest\ntopic read devices/#\ntopic write fleet/broadcast/#\n"),
            "{acl}"
        );
        assert!(!acl.contains("user sensor-1"), "{acl}");
    }

    #[test]
    fn claims_and_the_ca_service_get_exactly_the_lifecycle_topics() {
        let others = [
            ("factory".to_owned(), Role::Claim),
            ("ca-1".to_owned(), Role::CaService),
            ("ingest".to_owned(), Role::Service),
        ];
        let main = AclPolicy::default().mosquitto_acl(&others);
        assert!(
            main.contains("pattern write pki/v1/renew/%u/req\n"),
            "{main}"
        );
        assert!(
            main.contains("pattern read pki/v1/renew/%u/res/+\n"),
            "{main}"
        );
        assert!(
            main.contains("pattern write pki/v1/renew/%u/done\n"),
            "{main}"
        );
        assert!(main.contains("user factory\ntopic deny #\n"), "{main}");
        assert!(
            main.contains(
                "user ca-1\ntopic read pki/v1/renew/+/req\ntopic read pki/v1/renew/+/done\n\
                 topic write pki/v1/renew/+/res/+\n"
            ),
            "{main}"
        );
        let enroll = AclPolicy::enrollment_acl(&others);
        assert!(!enroll.contains("pattern"), "{enroll}");
        assert!(!enroll.contains("ingest"), "{enroll}");
        assert!(
            enroll.contains(
                "user factory\ntopic write pki/v1/enroll/factory/req\n\
                 topic read pki/v1/enroll/factory/res/+\n"
            ),
            "{enroll}"
        );
        assert!(
            enroll.contains(
                "user ca-1\ntopic read pki/v1/enroll/+/req\ntopic write pki/v1/enroll/+/res/+\n"
            ),
            "{enroll}"
        );
    }

    #[test]
    fn a_reader_is_denied_the_device_patterns_but_keeps_its_own_rules() {
        let bare = AclPolicy::default().mosquitto_acl(&[("dash".into(), Role::Reader)]);
        assert!(bare.contains("user dash\ntopic deny #\n"), "{bare}");
        let policy = AclPolicy {
            reader: vec![TopicRule::parse("read devices/#")],
            ..AclPolicy::default()
        };
        let acl = policy.mosquitto_acl(&[("dash".into(), Role::Reader)]);
        assert!(
            acl.contains(
                "user dash\ntopic deny devices/dash/#\ntopic deny fleet/broadcast/#\n\
                 topic read devices/#\n"
            ),
            "{acl}"
        );
        assert!(!acl.contains("deny #\n"), "{acl}");
    }
}
