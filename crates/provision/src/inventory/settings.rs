//! The CA's settings in the database: claim policies, the broker
//! folders, the topic rules, and named values.

use std::path::{Path, PathBuf};

use pki_core::Timestamp;
use serde::{Deserialize, Serialize};

use super::db::{NON_DEVICE_SQL, Raw, non_device};
use super::locked::LockedCa;
use crate::error::{Error, Result};
use crate::roles::{AclPolicy, Role};

/// What a claim certificate may enroll (`provision issue claim`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimPolicy {
    /// Names it may enroll (from manufacturing, say).
    #[serde(default)]
    pub names: Vec<String>,
    /// Or names matching this pattern: `*` stands for any run of
    /// characters (`sensor-*`).
    #[serde(default)]
    pub pattern: Option<String>,
    /// How many devices it may enroll in all.
    #[serde(default)]
    pub quota: Option<u64>,
    /// Until when (the claim certificate's end, or earlier).
    #[serde(with = "super::record::text")]
    pub until: Timestamp,
}

impl ClaimPolicy {
    /// Whether `name` is allowed.
    pub fn allows(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
            || self.pattern.as_deref().is_some_and(|p| glob(p, name))
    }
}

/// `*` matches any run of characters; everything else itself.
pub(super) fn glob(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

pub(super) fn parse_policy(stored: Option<String>, location: &str) -> Result<AclPolicy> {
    match stored {
        None => Ok(AclPolicy::default()),
        Some(json) => serde_json::from_str(&json).map_err(|e| Error::Inventory {
            location: location.to_owned(),
            reason: format!("the stored topic rules: {e}"),
        }),
    }
}

pub(super) fn parse_paths(stored: Option<String>, location: &str) -> Result<Vec<PathBuf>> {
    match stored {
        None => Ok(Vec::new()),
        Some(json) => serde_json::from_str(&json).map_err(|e| Error::Inventory {
            location: location.to_owned(),
            reason: format!("the stored broker folders: {e}"),
        }),
    }
}

impl LockedCa<'_> {
    /// [`super::Inventory::non_device_identities`], inside this transaction.
    pub fn non_device_identities(&mut self) -> Result<Vec<(String, Role)>> {
        let rows = self.run("reading", async |tx| {
            db_link::either!(tx, Tx(c) => sqlx::query_as::<_, Raw>(sqlx::AssertSqlSafe(
                NON_DEVICE_SQL.as_str()
            ))
            .fetch_all(&mut **c)
            .await)
        })?;
        non_device(rows, &self.inventory.location)
    }

    /// [`super::Inventory::acl_policy`], inside this transaction.
    pub fn acl_policy(&mut self) -> Result<AclPolicy> {
        let stored = self.state("acl_policy")?;
        parse_policy(stored, &self.inventory.location)
    }

    /// Remembers a broker folder's `mosquitto.conf` (for
    /// [`crate::broker::apply`]).
    pub fn add_broker_dir(&mut self, config: &Path) -> Result<()> {
        let stored = self.state("broker_configs")?;
        let mut configs = parse_paths(stored, &self.inventory.location)?;
        let config = crate::files::resolve(config);
        if !configs.contains(&config) {
            configs.push(config);
        }
        self.changes.settings = true;
        let json = serde_json::to_string(&configs).map_err(|e| Error::Inventory {
            location: self.inventory.location.clone(),
            reason: e.to_string(),
        })?;
        self.set_state("broker_configs", &json)
    }

    /// The largest packet broker identity `name`'s broker takes from a
    /// client, as a fleet manifest's `[[broker]] max_packet_size` set it.
    pub fn broker_max_packet_size(&mut self, name: &str) -> Result<Option<u32>> {
        let location = self.inventory.location.clone();
        self.state(&format!("broker_max_packet_size:{name}"))?
            .map(|text| {
                text.parse().map_err(|e| Error::Inventory {
                    location,
                    reason: format!("the stored max_packet_size of broker {name:?}: {e}"),
                })
            })
            .transpose()
    }

    /// Stores broker identity `name`'s `max_packet_size` (a fleet
    /// manifest's `[[broker]]`).
    pub fn set_broker_max_packet_size(&mut self, name: &str, bytes: u32) -> Result<()> {
        self.changes.settings = true;
        self.set_state(
            &format!("broker_max_packet_size:{name}"),
            &bytes.to_string(),
        )
    }

    /// Stores the topic rules of each role (a fleet manifest's `[acl]`).
    pub fn set_acl_policy(&mut self, policy: &AclPolicy) -> Result<()> {
        let json = serde_json::to_string(policy).map_err(|e| Error::Inventory {
            location: self.inventory.location.clone(),
            reason: e.to_string(),
        })?;
        self.changes.settings = true;
        self.set_state("acl_policy", &json)
    }

    /// The policy of claim `name` (`provision issue claim`).
    pub fn claim_policy(&mut self, name: &str) -> Result<Option<ClaimPolicy>> {
        let location = self.inventory.location.clone();
        self.state(&format!("claim:{name}"))?
            .map(|json| {
                serde_json::from_str(&json).map_err(|e| Error::Inventory {
                    location,
                    reason: format!("the policy of claim {name:?} is corrupt: {e}"),
                })
            })
            .transpose()
    }

    /// A random secret of the CA's services, made once and kept in the
    /// inventory (which only the CA's holders read): what `provision serve`
    /// derives its enrollment client id from when the CA key is in a token
    /// and cannot be hashed. Commit for a new one to stay.
    pub fn service_secret(&mut self) -> Result<String> {
        if let Some(secret) = self.state("service_secret")? {
            return Ok(secret);
        }
        let mut bytes = [0u8; 32];
        pki_core::random_bytes(&mut bytes)?;
        let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        self.set_state("service_secret", &secret)?;
        Ok(secret)
    }

    /// Stores the policy of claim `name`.
    pub fn set_claim_policy(&mut self, name: &str, policy: &ClaimPolicy) -> Result<()> {
        let json = serde_json::to_string(policy).map_err(|e| Error::Inventory {
            location: self.inventory.location.clone(),
            reason: e.to_string(),
        })?;
        self.set_state(&format!("claim:{name}"), &json)
    }

    pub(super) fn state(&mut self, name: &str) -> Result<Option<String>> {
        self.run("reading", async |tx| {
            db_link::either!(tx, Tx(c) => sqlx::query_scalar("SELECT value FROM ca_state WHERE name = $1")
                .bind(name)
                .fetch_optional(&mut **c)
                .await)
        })
    }

    pub(super) fn set_state(&mut self, name: &str, value: &str) -> Result<()> {
        self.run("writing", async |tx| {
            db_link::either!(tx, Tx(c) => sqlx::query(
                "INSERT INTO ca_state (name, value) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            )
            .bind(name)
            .bind(value)
            .execute(&mut **c)
            .await
            .map(|_| ()))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    #[test]
    fn claim_patterns_match_whole_names() {
        for (pattern, name, ok) in [
            ("sensor-*", "sensor-1", true),
            ("sensor-*", "sensor-", true),
            ("sensor-*", "xsensor-1", false),
            ("*-eu", "gw-eu", true),
            ("*-eu", "gw-eu-2", false),
            ("a*b*c", "a-b-c", true),
            ("a*b*c", "acb", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ] {
            assert_eq!(glob(pattern, name), ok, "{pattern} ~ {name}");
        }
        let policy = ClaimPolicy {
            names: vec!["gw-1".into()],
            pattern: Some("sensor-*".into()),
            quota: None,
            until: Timestamp(SystemTime::now()),
        };
        assert!(policy.allows("gw-1") && policy.allows("sensor-9"));
        assert!(!policy.allows("gw-2"));
    }
}
