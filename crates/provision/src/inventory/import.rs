//! The inventory of earlier versions (`inventory.jsonl`), imported once.

use std::path::{Path, PathBuf};

use pki_core::Timestamp;
use serde::Deserialize;

use super::locked::{AfterCommit, LockedCa};
use super::record::{Record, Status};
use crate::error::{Error, Result};
use crate::layout;
use crate::roles::Role;

/// The records of an `inventory.jsonl`.
pub(super) fn parse_jsonl(path: &Path, text: &str) -> Result<Vec<Record>> {
    /// The earlier format: no common name column, statuses as text.
    #[derive(Deserialize)]
    struct Old {
        serial: String,
        subject: String,
        profile: String,
        not_before: String,
        not_after: String,
        sha256: String,
        cert_path: PathBuf,
        status: OldStatus,
        /// In `list --json` exports (and archives) since roles.
        #[serde(default)]
        role: Option<Role>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "snake_case", tag = "state")]
    enum OldStatus {
        Valid,
        Revoked { at: String, reason: String },
    }
    let lines: Vec<&str> = text.lines().collect();
    let torn_possible = !text.is_empty() && !text.ends_with('\n');
    let mut records = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| Error::Inventory {
            location: path.display().to_string(),
            reason: format!("line {}: {reason}", i + 1),
        };
        let old: Old = match serde_json::from_str(line) {
            Ok(old) => old,
            Err(e) if torn_possible && i + 1 == lines.len() => {
                tracing::warn!(
                    "{}: line {}: left out, torn by a crash during an append ({e})",
                    path.display(),
                    i + 1
                );
                continue;
            }
            Err(e) => return Err(bad(e.to_string())),
        };
        let time = |s: &str| {
            s.parse::<Timestamp>()
                .map_err(|e| bad(format!("time {s:?}: {e}")))
        };
        records.push(Record {
            serial: old
                .serial
                .parse()
                .map_err(|e| bad(format!("serial {:?}: {e}", old.serial)))?,
            common_name: common_name_of(&old.subject)
                .ok_or_else(|| bad(format!("subject {:?} has no CN", old.subject)))?,
            profile: old
                .profile
                .parse()
                .map_err(|e| bad(format!("profile {:?}: {e}", old.profile)))?,
            not_before: time(&old.not_before)?,
            not_after: time(&old.not_after)?,
            sha256: old.sha256,
            cert_path: old.cert_path,
            status: match old.status {
                OldStatus::Valid => Status::Valid,
                OldStatus::Revoked { at, reason } => Status::Revoked {
                    at: time(&at)?,
                    reason: reason
                        .parse()
                        .map_err(|e| bad(format!("revocation reason {reason:?}: {e}")))?,
                },
            },
            subject: old.subject,
            role: old.role,
        });
    }
    Ok(records)
}

/// The CN of an RFC 4514 subject (`CN=a\,b,O=x` → `a,b`).
pub(super) fn common_name_of(subject: &str) -> Option<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = subject.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                current.push(c);
                if let Some(next) = chars.next() {
                    current.push(next);
                }
            }
            ',' | '+' => parts.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    parts.push(current);
    let value = parts
        .iter()
        .find_map(|p| p.trim().strip_prefix("CN=").map(str::to_owned))?;
    let mut out = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

impl LockedCa<'_> {
    /// Imports `inventory.jsonl` (the inventory of earlier versions) into
    /// this transaction; renamed `inventory.jsonl.imported` once it
    /// commits (a crash before that imports it again: records already there
    /// are kept, a revocation only the file has is applied). The CRL number
    /// continues from the larger of the file's and the database's.
    pub(super) fn import_jsonl(&mut self) -> Result<()> {
        let path = self.inventory.ca_dir.dir().join(layout::INVENTORY_JSONL);
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
            action: "reading",
            path: path.clone(),
            source,
        })?;
        let records = parse_jsonl(&path, &text)?;
        let counter = self.inventory.ca_dir.dir().join(layout::CRL_NUMBER);
        if let Ok(n) = std::fs::read_to_string(&counter) {
            let n: u64 = n.trim().parse().map_err(|e| Error::Inventory {
                location: counter.display().to_string(),
                reason: format!("not a CRL number: {e}"),
            })?;
            let stored = self
                .state("crl_number")?
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0);
            self.set_state("crl_number", &n.max(stored).to_string())?;
        }
        let mut new = Vec::new();
        for record in records {
            match self.find(&record.serial)? {
                None => new.push(record),
                Some(existing) => {
                    if let (Status::Valid, Status::Revoked { at, reason }) =
                        (existing.status, record.status)
                    {
                        self.revoke_at(&record.serial, at, reason)?;
                    }
                }
            }
        }
        tracing::info!(
            "importing {} record(s) from {} into {}",
            new.len(),
            path.display(),
            self.inventory.location
        );
        self.record(&new)?;
        self.after_commit.push(AfterCommit::Rename(
            path.clone(),
            path.with_extension("jsonl.imported"),
        ));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_names_come_out_of_escaped_subjects() {
        assert_eq!(common_name_of("CN=dev1,O=Org").as_deref(), Some("dev1"));
        assert_eq!(common_name_of("O=x,CN=a\\,b").as_deref(), Some("a,b"));
        assert_eq!(common_name_of("O=x"), None);
    }

    fn line(serial: &str) -> String {
        format!(
            "{{\"serial\":\"{serial}\",\"subject\":\"CN=x\",\"profile\":\"client\",\
             \"not_before\":\"2026-01-01T00:00:00Z\",\"not_after\":\"2027-01-01T00:00:00Z\",\
             \"sha256\":\"00\",\"cert_path\":\"backend_certs/x_cert.pem\",\
             \"status\":{{\"state\":\"valid\"}}}}"
        )
    }

    #[test]
    fn a_whole_last_line_without_newline_is_imported_and_a_torn_one_left_out() {
        let path = Path::new("inventory.jsonl");
        let whole = format!("{}\n{}", line("01"), line("02"));
        let serials = |text: &str| -> Vec<String> {
            parse_jsonl(path, text)
                .unwrap()
                .into_iter()
                .map(|r| r.serial.to_string())
                .collect()
        };
        assert_eq!(serials(&whole), ["01", "02"]);
        let l3 = line("03");
        let torn = format!("{}\n{}\n{}", line("01"), line("02"), &l3[..l3.len() / 2]);
        assert_eq!(serials(&torn), ["01", "02"]);
        // A bad line in the middle is an error naming it.
        let bad = format!("{}\nnot json\n{}\n", line("01"), line("02"));
        let e = parse_jsonl(path, &bad).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
    }
}
