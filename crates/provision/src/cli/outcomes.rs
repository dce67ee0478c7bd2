//! What each command comes to: a typed outcome that renders as text
//! (`Display`) or JSON (`Serialize`); `main` picks.

use std::fmt;
use std::io::Write;
use std::path::PathBuf;

use pki_core::{Serial, Timestamp};
use provision::broker::Applied;
use provision::inventory::{Record, Status};
use provision::layout::{BrokerPaths, IdentityPaths};
use provision::ops::Change;
use serde::Serialize;

/// What a command prints: text for people, JSON for programs.
pub(crate) trait Outcome: fmt::Display + Serialize {}
impl<T: fmt::Display + Serialize> Outcome for T {}

/// Prints an outcome as text or JSON.
pub(crate) fn print(outcome: &impl Outcome, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, outcome)?;
        writeln!(out)?;
    } else {
        let text = outcome.to_string();
        write!(out, "{text}")?;
        if !text.is_empty() && !text.ends_with('\n') {
            writeln!(out)?;
        }
    }
    out.flush()?;
    Ok(())
}

/// The broker folders brought up to date after a change (their CRL copy
/// and rules; the plugin of each running broker applies them).
#[derive(Serialize, Default)]
#[serde(transparent)]
pub(crate) struct Brokers(pub(super) Applied);

impl Brokers {
    /// An error naming the broker folders the change did not reach.
    pub(crate) fn in_step(&self) -> anyhow::Result<()> {
        let behind: Vec<String> = self
            .0
            .brokers
            .iter()
            .filter(|b| b.error.is_some())
            .map(|b| b.config.display().to_string())
            .collect();
        if behind.is_empty() {
            return Ok(());
        }
        anyhow::bail!(
            "the change is committed, but {} broker folder(s) are not in step: {}; fix the \
             folder and run `provision crl --if-due` to bring them up to date",
            behind.len(),
            behind.join(", ")
        )
    }
}

impl fmt::Display for Brokers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(n) = self.0.caught_up {
            writeln!(
                f,
                "  CRL number {n}, signed on another host, brought into this CA folder"
            )?;
        }
        for b in &self.0.brokers {
            if let Some(e) = &b.error {
                writeln!(f, "  broker {}: NOT in step: {e}", b.config.display())?;
            } else if b.plugin {
                writeln!(
                    f,
                    "  broker {}: CRL and rules updated; its plugin takes revoked \
                     connections off and reloads it",
                    b.config.display()
                )?;
            } else {
                writeln!(
                    f,
                    "  broker {}: CRL and acl_file updated; it runs without the plugin: \
                     reload it (SIGHUP), and restart it to end a revoked device's connection",
                    b.config.display()
                )?;
            }
        }
        Ok(())
    }
}

pub(super) fn when(t: std::time::SystemTime) -> String {
    Timestamp(t).to_string()
}

/// `init-ca`.
#[derive(Serialize)]
pub(crate) struct CaCreated {
    pub(super) subject: String,
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
    pub(super) encrypted: bool,
    /// The key's `pkcs11:` URI when it is in a token (the key file records
    /// it).
    pub(super) key_in_token: Option<String>,
    pub(super) not_after: String,
    /// Where a replaced CA went.
    pub(super) archived: Option<PathBuf>,
}

impl fmt::Display for CaCreated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(archive) = &self.archived {
            writeln!(
                f,
                "the previous CA (key, certificate, inventory, CRL) moved to the archive {}",
                archive.display()
            )?;
        }
        writeln!(f, "created CA {}", self.subject)?;
        writeln!(f, "  certificate: {}", self.cert.display())?;
        key_line(f, &self.key, self.encrypted, self.key_in_token.as_deref())?;
        writeln!(f, "  valid until: {}", self.not_after)
    }
}

/// Where a new CA key is: its file, or the token its file names.
fn key_line(
    f: &mut fmt::Formatter<'_>,
    key: &std::path::Path,
    encrypted: bool,
    in_token: Option<&str>,
) -> fmt::Result {
    match in_token {
        Some(uri) => writeln!(
            f,
            "  key:         in the token, {uri} (never leaves it; {} records where)",
            key.display()
        ),
        None => writeln!(
            f,
            "  key:         {} (0600{})",
            key.display(),
            if encrypted { ", encrypted" } else { "" }
        ),
    }
}

/// `init-ca --intermediate`.
#[derive(Serialize)]
pub(crate) struct IntermediateCreated {
    pub(super) subject: String,
    /// The root that signed it.
    pub(super) issuer: String,
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
    pub(super) encrypted: bool,
    /// The key's `pkcs11:` URI when it is in a token.
    pub(super) key_in_token: Option<String>,
    pub(super) not_after: String,
    /// The requested end, when it was cut to the root's.
    pub(super) capped_from: Option<String>,
    /// Where a replaced intermediate went.
    pub(super) archived: Option<PathBuf>,
    /// The CRL, now signed by the intermediate.
    pub(super) crl: PathBuf,
    /// The trust anchor: the CA file of devices and brokers.
    pub(super) ca_cert: PathBuf,
    /// The root key, no longer needed in the folder.
    pub(super) root_key: PathBuf,
    /// Valid client certificates issued before this intermediate.
    pub(super) earlier_clients: usize,
    pub(super) brokers: Brokers,
}

impl fmt::Display for IntermediateCreated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(archive) = &self.archived {
            writeln!(
                f,
                "the previous intermediate (key, certificate) moved to the archive {}",
                archive.display()
            )?;
        }
        writeln!(
            f,
            "created intermediate CA {} (signed by {}, path length 0)",
            self.subject, self.issuer
        )?;
        writeln!(f, "  certificate: {}", self.cert.display())?;
        key_line(f, &self.key, self.encrypted, self.key_in_token.as_deref())?;
        writeln!(f, "  valid until: {}", self.not_after)?;
        if let Some(requested) = &self.capped_from {
            writeln!(
                f,
                "  note: the requested end {requested} is after the root's expiry; cut to the root's"
            )?;
        }
        writeln!(
            f,
            "  CRL:         {} (signed by the intermediate)",
            self.crl.display()
        )?;
        writeln!(
            f,
            "every command now signs with the intermediate; devices and brokers keep {} as \
             their CA file",
            self.ca_cert.display()
        )?;
        writeln!(
            f,
            "the root key is not needed any more: move it offline, e.g.\n  mv {} /offline/\n\
             (bring it back only to make the next intermediate)",
            self.root_key.display()
        )?;
        if self.earlier_clients > 0 {
            writeln!(
                f,
                "warning: {} valid client certificate(s) were issued before this intermediate: \
                 a broker checks a client against its issuer's CRL, and only the intermediate \
                 signs CRLs now, so brokers refuse them once the last CRL of their issuer is \
                 gone (restart, or its next update): reissue them (`provision fleet` does on \
                 its next run; else `provision issue client NAME --force`)",
                self.earlier_clients
            )?;
        }
        write!(f, "{}", self.brokers)
    }
}

/// `issue client|server`.
#[derive(Serialize)]
pub(crate) struct Issued {
    pub(super) profile: &'static str,
    pub(super) subject: String,
    #[serde(flatten)]
    pub(super) paths: IdentityPaths,
    pub(super) serial: String,
    pub(super) not_after: String,
    pub(super) superseded: Vec<String>,
    /// The requested end, when it was cut to the CA's expiry.
    pub(super) capped_from: Option<String>,
    pub(super) brokers: Brokers,
}

impl fmt::Display for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "issued {} certificate {}", self.profile, self.subject)?;
        writeln!(f, "  key:         {} (0600)", self.paths.key.display())?;
        writeln!(f, "  CSR:         {}", self.paths.csr.display())?;
        writeln!(f, "  certificate: {}", self.paths.cert.display())?;
        writeln!(f, "  serial:      {}", self.serial)?;
        writeln!(f, "  valid until: {}", self.not_after)?;
        for serial in &self.superseded {
            writeln!(f, "  superseded:  {serial} (revoked; CRL rewritten)")?;
        }
        if let Some(requested) = &self.capped_from {
            writeln!(
                f,
                "  note: the requested end {requested} is after the CA's expiry; cut to the CA's"
            )?;
        }
        write!(f, "{}", self.brokers)
    }
}

pub(super) fn serials(serials: &[Serial]) -> Vec<String> {
    serials.iter().map(ToString::to_string).collect()
}

/// `csr`.
#[derive(Serialize)]
pub(crate) struct CsrMade {
    pub(super) key: PathBuf,
    pub(super) csr: PathBuf,
}

impl fmt::Display for CsrMade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "key: {} (0600)", self.key.display())?;
        writeln!(f, "CSR: {}", self.csr.display())
    }
}

/// `sign`.
#[derive(Serialize)]
pub(crate) struct Signed {
    pub(super) subject: String,
    pub(super) cert: PathBuf,
    pub(super) serial: String,
    pub(super) not_after: String,
    pub(super) granted: Vec<String>,
    pub(super) refused: Vec<RefusedName>,
    pub(super) superseded: Vec<String>,
    pub(super) capped: bool,
    pub(super) brokers: Brokers,
}

#[derive(Serialize)]
pub(super) struct RefusedName {
    pub(super) name: String,
    pub(super) reason: String,
}

impl fmt::Display for Signed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "signed {} -> {}", self.subject, self.cert.display())?;
        writeln!(f, "  serial:      {}", self.serial)?;
        writeln!(f, "  valid until: {}", self.not_after)?;
        writeln!(f, "  granted: {}", self.granted.join(", "))?;
        for refused in &self.refused {
            writeln!(f, "  not granted: {} ({})", refused.name, refused.reason)?;
        }
        for serial in &self.superseded {
            writeln!(f, "  superseded:  {serial} (revoked; CRL rewritten)")?;
        }
        if self.capped {
            writeln!(f, "  note: validity cut to the CA's expiry")?;
        }
        write!(f, "{}", self.brokers)
    }
}

/// `verify`: only printed when the certificate is valid (the command
/// fails otherwise).
#[derive(Serialize)]
pub(crate) struct Verified {
    pub(super) valid: bool,
    pub(super) detail: String,
    /// The CRL revocation was checked against (`null`: not checked).
    pub(super) revocation_checked_against: Option<PathBuf>,
    /// The certificate, each intermediate, and the CA of the CA file.
    pub(super) chain: Vec<provision::inspect::ChainEntry>,
    #[serde(skip)]
    pub(super) shown: String,
}

impl fmt::Display for Verified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.shown)
    }
}

/// `revoke`.
#[derive(Serialize)]
pub(crate) struct Revoked {
    /// The name given (`--name`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) name: Option<String>,
    /// The certificates asked for, as they are now.
    pub(super) certificates: Vec<RevokedCert>,
    /// Certificates renewed from them, revoked for the same reason.
    pub(super) renewals: Vec<String>,
    /// The names' superseded certificates revoked for this reason too.
    pub(super) withdrawn: Vec<String>,
    /// Other certificates of the same names left valid.
    pub(super) still_valid: Vec<Record>,
    pub(super) crl: PathBuf,
    pub(crate) brokers: Brokers,
}

/// One certificate `revoke` was asked for.
#[derive(Serialize)]
pub(super) struct RevokedCert {
    #[serde(flatten)]
    pub(super) record: Record,
    pub(super) change: Change,
}

impl fmt::Display for Revoked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let (Some(name), true) = (&self.name, self.certificates.is_empty()) {
            writeln!(f, "{name} has no valid certificate: nothing revoked")?;
        }
        for RevokedCert { record, change } in &self.certificates {
            let (reason, at) = match record.status {
                Status::Revoked { reason, at } => (reason.to_string(), at.to_string()),
                Status::Valid => ("not revoked".into(), String::new()),
            };
            match change {
                Change::Revoked => writeln!(
                    f,
                    "revoked {} (serial {}, {reason})",
                    record.subject, record.serial
                )?,
                Change::ReasonChanged => writeln!(
                    f,
                    "{} (serial {}) was revoked as superseded on {at}; its reason is now \
                     {reason}",
                    record.subject, record.serial
                )?,
                Change::Unchanged => writeln!(
                    f,
                    "{} (serial {}) was already revoked on {at} ({reason}): its revocation \
                     is unchanged",
                    record.subject, record.serial
                )?,
            }
        }
        for serial in &self.renewals {
            writeln!(
                f,
                "  also revoked: {serial}, renewed from it (whoever held its key could \
                 renew)"
            )?;
        }
        for serial in &self.withdrawn {
            writeln!(
                f,
                "  also revoked: {serial}, an earlier certificate that a renewal superseded \
                 (a connection still on it ends too)"
            )?;
        }
        for r in &self.still_valid {
            writeln!(
                f,
                "  still valid: {} serial {} (until {}, {}); `provision revoke --name {}` \
                 revokes every certificate of the name",
                r.common_name,
                r.serial,
                r.not_after,
                r.cert_path.display(),
                r.common_name
            )?;
        }
        writeln!(
            f,
            "  CRL: {} (give it to the broker: crlfile)",
            self.crl.display()
        )?;
        write!(f, "{}", self.brokers)?;
        Ok(())
    }
}

/// `crl`.
#[derive(Serialize)]
pub(crate) struct CrlWritten {
    /// Whether a new CRL was signed (`--if-due`: only when due).
    pub(super) written: bool,
    pub(super) path: PathBuf,
    pub(super) number: u64,
    pub(super) revoked: usize,
    /// Backdated like certificates' notBefore.
    pub(super) this_update: String,
    pub(super) next_update: String,
    pub(crate) brokers: Brokers,
}

impl fmt::Display for CrlWritten {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.written {
            writeln!(
                f,
                "{} is not due (number {}, next update {}): nothing signed",
                self.path.display(),
                self.number,
                self.next_update
            )?;
            return write!(f, "{}", self.brokers);
        }
        writeln!(
            f,
            "wrote {} (number {}, {} revoked, next update {})",
            self.path.display(),
            self.number,
            self.revoked,
            self.next_update
        )?;
        write!(f, "{}", self.brokers)
    }
}

/// `fleet --dry-run`.
#[derive(Serialize)]
pub(crate) struct FleetPlanned {
    pub(super) manifest: PathBuf,
    #[serde(flatten)]
    pub(super) plan: provision::fleet::Plan,
}

/// Lines of a plan printed in full; the rest are counted.
const PLAN_LINES: usize = 50;

impl fmt::Display for FleetPlanned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use provision::fleet::Step;
        let count =
            |want: fn(&Step) -> bool| self.plan.steps.iter().filter(|(_, s)| want(s)).count();
        writeln!(
            f,
            "dry run of {}: {} to issue, {} to issue anew, {} kept, {} left to a renewal made \
             elsewhere; nothing written{}",
            self.manifest.display(),
            count(|s| matches!(s, Step::Issue)),
            count(|s| matches!(s, Step::Reissue { .. })),
            count(|s| matches!(s, Step::Keep)),
            count(|s| matches!(s, Step::RenewedElsewhere { .. })),
            if self.plan.ca_created {
                format!(
                    "; the CA would be created in {}",
                    self.plan.ca_dir.display()
                )
            } else {
                String::new()
            }
        )?;
        let changes: Vec<String> = self
            .plan
            .steps
            .iter()
            .filter_map(|(name, step)| match step {
                Step::Issue => Some(format!("  issue    {name}")),
                Step::Reissue { why, role_changed } => Some(format!(
                    "  reissue  {name}: {why}{}",
                    if *role_changed {
                        " (its old certificates revoked as privilege-withdrawn)"
                    } else {
                        ""
                    }
                )),
                Step::RenewedElsewhere { serial } => Some(format!(
                    "  leave    {name}: renewed elsewhere as serial {serial}"
                )),
                Step::Keep => None,
            })
            .collect();
        for line in changes.iter().take(PLAN_LINES) {
            writeln!(f, "{line}")?;
        }
        if changes.len() > PLAN_LINES {
            writeln!(
                f,
                "  ... and {} more (--json lists all)",
                changes.len() - PLAN_LINES
            )?;
        }
        Ok(())
    }
}

/// `fleet`.
#[derive(Serialize)]
pub(crate) struct FleetDone {
    pub(super) manifest: PathBuf,
    pub(super) ca_dir: PathBuf,
    pub(super) ca_cert: PathBuf,
    pub(super) ca_created: bool,
    pub(super) issued: usize,
    pub(super) kept: usize,
    pub(super) replaced: usize,
    pub(super) renewed_elsewhere: usize,
    pub(super) brokers: Vec<FleetIdentity>,
    pub(super) device_folders: Vec<PathBuf>,
    /// The manifest's first device and its files (an example to try).
    pub(super) first_device: Option<FleetIdentity>,
    /// The manifest's first service and its files.
    pub(super) first_service: Option<FleetIdentity>,
    /// The broker folders brought up to date.
    pub(super) refreshed: Brokers,
    /// Names reissued with another role (their old certificates revoked as
    /// privilege-withdrawn: the brokers' plugins take them off).
    pub(super) role_changed: Vec<String>,
    #[serde(skip)]
    pub(super) seconds: f64,
}

/// An identity a fleet made: its name and files.
#[derive(Serialize)]
pub(super) struct FleetIdentity {
    pub(super) name: String,
    #[serde(flatten)]
    pub(super) paths: IdentityPaths,
}

impl fmt::Display for FleetDone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "fleet {}: CA {} in {}; {} issued, {} already valid and kept ({:.1} s)",
            self.manifest.display(),
            if self.ca_created { "created" } else { "kept" },
            self.ca_dir.display(),
            self.issued,
            self.kept,
            self.seconds
        )?;
        if self.renewed_elsewhere > 0 {
            writeln!(
                f,
                "  {} of the kept were renewed elsewhere (the inventory's current \
                 certificate is newer than the one on disk): left as they are",
                self.renewed_elsewhere
            )?;
        }
        if self.replaced > 0 {
            writeln!(
                f,
                "  {} of them replaced a revoked, expiring or changed certificate, now \
                 revoked as superseded (CRL rewritten)",
                self.replaced
            )?;
        }
        write!(f, "{}", self.refreshed)?;
        if !self.role_changed.is_empty() {
            writeln!(
                f,
                "  role changed: {} (old certificates revoked as privilege-withdrawn: the \
                 brokers' plugins take their connections off)",
                self.role_changed.join(", ")
            )?;
        }
        Ok(())
    }
}

/// `broker-config`.
#[derive(Serialize)]
pub(crate) struct BrokerWritten {
    #[serde(flatten)]
    pub(super) paths: BrokerPaths,
    /// The systemd units written (`--systemd`).
    pub(super) systemd: Vec<PathBuf>,
    /// Whether the CRL was included.
    pub(super) with_crl: bool,
}

impl fmt::Display for BrokerWritten {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "wrote {}{}",
            self.paths.config.display(),
            if self.with_crl { " (with the CRL)" } else { "" }
        )?;
        writeln!(
            f,
            "start it with: mosquitto -c {}",
            self.paths.config.display()
        )?;
        for unit in &self.systemd {
            writeln!(f, "wrote {}", unit.display())?;
        }
        if !self.systemd.is_empty() {
            writeln!(
                f,
                "install them: cp {dir}/provision-crl.* /etc/systemd/system/ && systemctl enable --now provision-crl.timer",
                dir = self
                    .paths
                    .config
                    .parent()
                    .unwrap_or(std::path::Path::new("."))
                    .display()
            )?;
        }
        Ok(())
    }
}

/// `pub`.
#[derive(Serialize)]
pub(crate) struct Published {
    pub(super) topic: String,
    pub(super) qos: u8,
    pub(super) bytes: usize,
}

impl fmt::Display for Published {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Said on standard error (see `publish`): standard output stays
        // free for scripts.
        Ok(())
    }
}

/// One message `sub --json` prints, on a line of its own.
#[derive(Serialize)]
pub(super) struct Message<'a> {
    pub(super) topic: &'a str,
    /// The payload when it is UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) payload: Option<&'a str>,
    /// The payload in base64 when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) payload_base64: Option<String>,
}

/// `audit`.
#[derive(Serialize)]
pub(crate) struct Audited {
    pub(super) inventory: String,
    #[serde(flatten)]
    pub(super) report: provision::audit::Report,
}

impl Audited {
    /// How many things were found.
    pub(crate) fn findings(&self) -> usize {
        self.report.findings.len()
    }
}

impl fmt::Display for Audited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "audit of {}: {} valid, {} revoked; {} finding(s)",
            self.inventory,
            self.report.valid,
            self.report.revoked,
            self.report.findings.len()
        )?;
        for finding in &self.report.findings {
            writeln!(f, "  {finding}")?;
        }
        Ok(())
    }
}
