//! Taking a committed change to every broker folder.

use std::path::{Path, PathBuf};

use pki_core::Crl;

use super::rules::{loads_plugin, write_rules};
use crate::error::Result;
use crate::files::{Access, read_text, write_atomic};
use crate::inventory::{Committed, Inventory};
use crate::layout::BrokerPaths;

/// What [`apply`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Applied {
    /// The number of the CRL another host sharing the inventory signed,
    /// brought into this host's CA folder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caught_up: Option<u64>,
    /// Each broker folder of this host.
    pub brokers: Vec<Refreshed>,
}

/// What [`apply`] did for one broker folder.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Refreshed {
    /// Its `mosquitto.conf`.
    pub config: PathBuf,
    /// Whether its broker loads the plugin, which applies the new CRL and
    /// rules itself (taking revoked connections off and reloading the
    /// broker); without it the broker must be reloaded by hand.
    pub plugin: bool,
    /// What went wrong (the folder not writable): the change is committed,
    /// the broker not yet in step.
    pub error: Option<String>,
}

/// The number of a CRL in PEM, if it parses and has one.
fn number(text: &str) -> Option<u64> {
    Crl::from_pem(text).ok().and_then(|c| c.number())
}

/// Takes a committed change to the brokers: the one step after every
/// [`crate::inventory::LockedCa::commit`] (and at each tick of `provision
/// serve`, and at every command with `committed` empty).
///
/// First the catch-up of a shared inventory: when another host signed a
/// newer CRL, this host's CA folder gets it. Then every broker folder
/// `broker-config` wrote on this host for this CA gets the CA folder's
/// CRL and its rules (the plugin's rules files, or the `acl_file`s of a
/// folder without it), each file written only when it changed. A broker
/// loading the plugin needs nothing more: the plugin sees the files
/// change, takes the connections of revoked certificates off within a
/// second, and reloads its broker (once per new CRL) so that their
/// handshakes fail. `provision` never signals a process.
///
/// Best effort, after the commit: a folder it cannot write is reported in
/// [`Refreshed::error`], never an error of the command whose change
/// already took effect. A folder whose `ca.pem` is not this CA's (another
/// CA wrote there since), or that is a link, is left alone; a CRL copy is
/// never replaced by an older one. The CA folder's lock is held
/// throughout, so that two processes never cross their copies.
pub fn apply(inventory: &Inventory, committed: &Committed) -> Result<Applied> {
    let ca_dir = inventory.ca_dir();
    let _lock = ca_dir.lock()?;
    let mut applied = Applied::default();
    if committed.crl.is_none()
        && let Some(latest) = inventory.latest_crl()?
    {
        let path = ca_dir.crl_path();
        let local = std::fs::read_to_string(&path).ok();
        // Equal text first: a CRL of 500,000 entries takes a second to parse.
        if local.as_deref() != Some(latest.as_str())
            && number(&latest) > local.as_deref().and_then(number)
        {
            write_atomic(&path, latest.as_bytes(), Access::Public, true)?;
            applied.caught_up = number(&latest);
        }
    }
    applied.brokers = refresh(inventory)?;
    Ok(applied)
}

/// Brings every broker folder of this host up to the CA folder: see
/// [`apply`].
fn refresh(inventory: &Inventory) -> Result<Vec<Refreshed>> {
    let configs = inventory.broker_configs()?;
    if configs.is_empty() {
        return Ok(Vec::new());
    }
    let ca_dir = inventory.ca_dir();
    // The CA's own CRL, read whole: a fleet's revocations pass the 16 MiB
    // cap on files from outside (500,000 entries are 36 MB).
    let crl_path = ca_dir.crl_path();
    let crl = std::fs::read_to_string(&crl_path).map_err(|source| crate::Error::Io {
        action: "reading",
        path: crl_path.clone(),
        source,
    })?;
    let ca = read_text(&ca_dir.cert_path())?;
    // The rules' inputs: when they cannot be read, the CRL still goes out.
    let rules_input = inventory
        .non_device_identities()
        .and_then(|others| Ok((others, inventory.acl_policy()?)));
    let mut done = Vec::new();
    for config in configs {
        // A folder removed, rewritten by hand, replaced by a link, or now
        // another CA's is left alone.
        let text = match std::fs::read_to_string(&config) {
            Ok(text) => text,
            // Not on this host (another host's folder), or removed.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                done.push(Refreshed {
                    config: config.clone(),
                    plugin: false,
                    error: Some(format!("its mosquitto.conf cannot be read: {e}")),
                });
                continue;
            }
        };
        let folder = config.parent().unwrap_or(Path::new(".")).to_owned();
        let paths = BrokerPaths::new(&folder);
        let linked = std::fs::symlink_metadata(&folder).is_ok_and(|m| m.file_type().is_symlink());
        let ours = std::fs::read_to_string(&paths.ca).is_ok_and(|c| c == ca);
        if !text.starts_with("# Generated by `provision broker-config`") {
            continue;
        }
        let plugin = loads_plugin(&text);
        if linked || !ours {
            done.push(Refreshed {
                config: config.clone(),
                plugin,
                error: Some(
                    "left alone: its ca.pem is not this CA's (another CA configured it since), \
                     or the folder is a link"
                        .into(),
                ),
            });
            continue;
        }
        let enrollment = paths.enroll_config.exists();
        // The rules first, so that a broker that reloads for the new CRL
        // has the rules that go with it; but the CRL goes out whatever
        // became of the rules.
        let rules = match &rules_input {
            Ok((others, policy)) => {
                write_rules(others, policy, &paths, plugin, enrollment).map_err(|e| e.to_string())
            }
            Err(e) => Err(format!("reading them from the inventory: {e}")),
        };
        let current = std::fs::read_to_string(&paths.crl).ok();
        let crl_written = if current.as_deref() == Some(crl.as_str()) {
            Ok(())
        } else {
            let (theirs, ours) = (current.as_deref().and_then(number), number(&crl));
            if theirs <= ours {
                write_atomic(&paths.crl, crl.as_bytes(), Access::Public, true)
                    .map_err(|e| e.to_string())
            } else {
                // Never replaced by an older one; but a copy numbered above
                // the CA's own is not the CA's latest either: said, not
                // left in place silently.
                Err(format!(
                    "it holds CRL number {theirs:?}, above the CA's {ours:?}: not this CA's \
                     latest; remove it and run `provision crl --if-due`"
                ))
            }
        };
        let error = match (crl_written, rules) {
            (Ok(()), Ok(())) => None,
            (Err(e), _) => Some(format!("its CRL: {e}")),
            (Ok(()), Err(e)) => Some(format!("its rules (the CRL is in step): {e}")),
        };
        done.push(Refreshed {
            config: config.clone(),
            plugin,
            error,
        });
    }
    Ok(done)
}
