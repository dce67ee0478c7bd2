//! What a planted file or a careless manifest must not do to the CA: links
//! in an output folder are never written through, and no identity may land
//! on the CA's own files.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

mod common;

use common::{fails, mode, ok};

const MANIFEST: &str = r#"
[ca]
dir = "root_cert"
common_name = "Safety Root"

[[devices]]
name = "dev1"
"#;

/// The CA's key and certificate, to compare before and after.
fn ca_files(d: &Path) -> (Vec<u8>, Vec<u8>) {
    (
        std::fs::read(d.join("root_cert/root_ca.key")).unwrap(),
        std::fs::read(d.join("root_cert/root_ca_cert.pem")).unwrap(),
    )
}

/// A fleet with `dev1` whose three files are then removed (so the next
/// run issues it again) and `plant` puts a link to the CA key at one of
/// them: the next run is refused, naming that file, and the CA key stays
/// byte-identical, 0600.
fn planted_link_is_refused(file: &str, plant: impl FnOnce(&Path, &Path) -> std::io::Result<()>) {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("fleet.toml"), MANIFEST).unwrap();
    ok(d, &["fleet", "fleet.toml"]);
    let before = ca_files(d);
    for name in ["dev1.key", "dev1_cert.pem", "dev1_csr.pem"] {
        std::fs::remove_file(d.join("backend_certs").join(name)).unwrap();
    }
    plant(
        &d.join("root_cert/root_ca.key"),
        &d.join("backend_certs").join(file),
    )
    .unwrap();
    let e = fails(d, &["fleet", "fleet.toml"], 1);
    assert!(
        e.contains(&format!("backend_certs/{file}")) && e.contains("link"),
        "{e}"
    );
    assert_eq!(
        ca_files(d),
        before,
        "the CA key was written through the link"
    );
    assert_eq!(mode(&d.join("root_cert/root_ca.key")), 0o600);
}

/// A symbolic link planted where `fleet` writes a device's key is refused,
/// not written through.
#[test]
fn fleet_never_writes_through_a_planted_symlink() {
    planted_link_is_refused("dev1.key", |target, link| {
        std::os::unix::fs::symlink(target, link)
    });
}

/// A hard link to the CA key planted as a device's certificate: truncating
/// it would truncate the CA key.
#[test]
fn fleet_never_truncates_a_planted_hard_link() {
    planted_link_is_refused("dev1_cert.pem", |target, link| {
        std::fs::hard_link(target, link)
    });
}

/// A device named `root_ca` written into the CA folder would be
/// `root_cert/root_ca.key`: the CA's own key. Refused before anything is
/// written, however the folder is spelled.
#[test]
fn no_identity_may_land_in_the_ca_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("fleet.toml"), MANIFEST).unwrap();
    ok(d, &["fleet", "fleet.toml"]);
    let before = ca_files(d);
    for out in ["root_cert", "./root_cert", "backend_certs/../root_cert"] {
        std::fs::write(
            d.join("evil.toml"),
            format!("[ca]\ndir = \"root_cert\"\n[[devices]]\nname = \"dev9\"\nout = \"{out}\"\n"),
        )
        .unwrap();
        let e = fails(d, &["fleet", "evil.toml"], 1);
        assert!(e.contains("CA folder"), "{out}: {e}");
        assert_eq!(ca_files(d), before, "{out}: the CA was overwritten");
    }
    // The CLI's own `issue --out` likewise.
    let e = fails(
        d,
        &["issue", "client", "dev9", "--out", "root_cert", "--force"],
        1,
    );
    assert!(e.contains("CA folder"), "{e}");
    // And no identity takes the CA's own file name, wherever it goes (a
    // folder swapped for a link to the CA folder after the check).
    let e = fails(d, &["issue", "client", "root_ca", "--out", "elsewhere"], 1);
    assert!(e.contains("CA's own file name"), "{e}");
    assert_eq!(ca_files(d), before);
}

/// `init-ca --force` replaces the CA: the old CA's inventory, CRL and CRL
/// number go into an archive with its key and certificate, instead of
/// staying next to the new CA (whose broker would get a CRL signed by a key
/// that no longer exists there).
#[test]
fn a_replaced_ca_is_archived_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init-ca"]);
    ok(d, &["issue", "client", "dev1"]);
    ok(d, &["revoke", "backend_certs/dev1_cert.pem"]);
    let (old_key, old_cert) = ca_files(d);
    let old_records = common::records(d);
    assert_eq!(old_records.len(), 1);
    let old_crl = std::fs::read(d.join("root_cert/crl.pem")).unwrap();
    let out = ok(d, &["init-ca", "--force"]);
    assert!(
        !d.join("root_cert/crl.pem").exists(),
        "the old CA's CRL left beside the new one"
    );
    let archives: Vec<_> = std::fs::read_dir(d.join("root_cert/archive"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(archives.len(), 1, "{archives:?}");
    let archive = &archives[0];
    assert!(out.contains("archive"), "says where the old CA went: {out}");
    assert_eq!(std::fs::read(archive.join("root_ca.key")).unwrap(), old_key);
    assert_eq!(
        std::fs::read(archive.join("root_ca_cert.pem")).unwrap(),
        old_cert
    );
    // The archive is a CA folder of its own: its inventory still lists
    // what the old CA issued; the new CA's starts empty.
    let archived = ok(
        d,
        &["list", "--json", "--ca-dir", archive.to_str().unwrap()],
    );
    let archived: Vec<serde_json::Value> = serde_json::from_str(&archived).unwrap();
    assert_eq!(archived, old_records);
    assert!(common::records(d).is_empty());
    assert_eq!(std::fs::read(archive.join("crl.pem")).unwrap(), old_crl);
    assert_eq!(mode(&archive.join("root_ca.key")), 0o600);
    assert_eq!(mode(archive) & 0o077, 0, "the archive is private");
    assert_ne!(ca_files(d).0, old_key, "a new CA key");
}

/// The CRL number continues from the larger of the inventory's counter and
/// the CRL on disk: a CRL with a lower number than the broker's last one
/// would be ignored or, worse, roll back revocations.
#[test]
fn the_crl_number_never_goes_back() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init-ca"]);
    ok(d, &["crl"]);
    ok(d, &["crl"]);
    let number = |d: &Path| -> u64 {
        let text = ok(d, &["inspect", "root_cert/crl.pem"]);
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with("number:"))
            .unwrap();
        line.split(':').nth(1).unwrap().trim().parse().unwrap()
    };
    assert_eq!(number(d), 2);
    // The inventory's counter goes back (restored from an old backup, say).
    sql(
        d,
        "UPDATE ca_state SET value = '0' WHERE name = 'crl_number'",
    );
    ok(d, &["crl"]);
    assert_eq!(number(d), 3);
}

/// A CA key encrypted with a trivially short passphrase is barely
/// encrypted: refused, with nothing written.
#[test]
fn a_new_ca_key_needs_a_real_passphrase() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_provision"))
        .current_dir(d)
        .args(["init-ca", "--passphrase-env", "CA_PASS"])
        .env("CA_PASS", "1234")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("at least 8"), "{stderr}");
    assert!(!d.join("root_cert/root_ca.key").exists());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_provision"))
        .current_dir(d)
        .args(["init-ca", "--passphrase-env", "CA_PASS"])
        .env("CA_PASS", "correct horse")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs one SQL statement on the inventory in `d/root_cert`.
fn sql(d: &Path, statement: &str) {
    let db = d.join("root_cert/inventory.db");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            use sqlx::Connection;
            let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&db);
            let mut c = sqlx::SqliteConnection::connect_with(&options)
                .await
                .unwrap();
            let done = sqlx::query(sqlx::AssertSqlSafe(statement))
                .execute(&mut c)
                .await
                .unwrap();
            assert_eq!(done.rows_affected(), 1, "{statement}");
            c.close().await.unwrap();
        });
}

/// A record that cannot be read is an error naming the inventory and the
/// record, never a guess: a revocation whose reason is unreadable does not
/// become a CRL entry with reason unspecified, a profile that is no profile
/// does not become a client.
#[test]
fn a_corrupt_record_is_an_error_not_a_guess() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init-ca"]);
    ok(d, &["issue", "client", "dev1"]);
    ok(
        d,
        &[
            "revoke",
            "backend_certs/dev1_cert.pem",
            "--reason",
            "key-compromise",
        ],
    );
    let serial = common::records(d)[0]["serial"].as_str().unwrap().to_owned();
    sql(
        d,
        "UPDATE certificates SET revocation_reason = 'bogus-reason' WHERE revoked_at IS NOT NULL",
    );
    let before = std::fs::read(d.join("root_cert/crl.pem")).unwrap();
    let e = fails(d, &["crl"], 1);
    assert!(
        e.contains("inventory.db") && e.contains(&serial) && e.contains("bogus-reason"),
        "{e}"
    );
    assert_eq!(std::fs::read(d.join("root_cert/crl.pem")).unwrap(), before);
    sql(
        d,
        "UPDATE certificates SET revocation_reason = 'key-compromise', profile = 'bogus'",
    );
    let e = fails(d, &["list"], 1);
    assert!(e.contains(&serial) && e.contains("profile"), "{e}");
}

/// An earlier version's `inventory.jsonl` is imported once: every record,
/// a last line without its newline included when it is whole, left out
/// when a crash tore it; a bad line elsewhere is an error naming it, and
/// nothing is imported.
#[test]
fn an_earlier_inventory_is_imported_once() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init-ca"]);
    let line = |serial: &str, name: &str, status: &str| {
        format!(
            "{{\"serial\":\"{serial}\",\"subject\":\"CN={name},O=Org\",\"profile\":\"client\",\
             \"not_before\":\"2026-01-01T00:00:00Z\",\"not_after\":\"2027-01-01T00:00:00Z\",\
             \"sha256\":\"00\",\"cert_path\":\"backend_certs/{name}_cert.pem\",\
             \"status\":{status}}}"
        )
    };
    let valid = "{\"state\":\"valid\"}";
    let revoked =
        "{\"state\":\"revoked\",\"at\":\"2026-02-01T00:00:00Z\",\"reason\":\"key-compromise\"}";
    let jsonl = d.join("root_cert/inventory.jsonl");
    // A bad line in the middle: refused, naming it; nothing imported.
    std::fs::write(
        &jsonl,
        format!(
            "{}\nnot json\n{}\n",
            line("0A", "a", valid),
            line("0B", "b", valid)
        ),
    )
    .unwrap();
    let e = fails(d, &["list"], 1);
    assert!(e.contains("inventory.jsonl") && e.contains("line 2"), "{e}");
    // A whole last line without its newline is a record.
    std::fs::write(
        &jsonl,
        format!("{}\n{}", line("0A", "a", valid), line("0B", "b", revoked)),
    )
    .unwrap();
    let records = common::records(d);
    let serials: Vec<&str> = records
        .iter()
        .map(|r| r["serial"].as_str().unwrap())
        .collect();
    assert_eq!(serials, ["0A", "0B"]);
    assert_eq!(records[0]["common_name"], "a");
    assert_eq!(records[1]["status"]["reason"], "key-compromise");
    assert!(!jsonl.exists() && d.join("root_cert/inventory.jsonl.imported").exists());
    // Once: a second look imports nothing more.
    assert_eq!(common::records(d).len(), 2);
    // A torn last line (a crash during an append) is left out.
    let whole = line("0D", "d", valid);
    std::fs::write(
        &jsonl,
        format!("{}\n{}", line("0C", "c", valid), &whole[..whole.len() / 2]),
    )
    .unwrap();
    let serials: Vec<String> = common::records(d)
        .iter()
        .map(|r| r["serial"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(serials, ["0A", "0B", "0C"]);
}

/// A command that loaded the CA and then waited for the lock while
/// `init-ca --force` replaced it does nothing with the retired key: the CA
/// on disk is checked again under the lock. The new CA is not harmed.
#[test]
fn a_ca_replaced_while_a_command_waited_is_not_used() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init-ca"]);
    ok(d, &["issue", "client", "dev1"]);
    let ca_dir = provision::ca_folder::CaDir::new(d.join("root_cert"));
    let old = ca_dir.load(None).unwrap();
    let inventory = provision::inventory::Inventory::open(&ca_dir).unwrap();
    ok(d, &["init-ca", "--force"]);
    let e = inventory.lock(&old).unwrap_err().to_string();
    assert!(e.contains("changed while this command waited"), "{e}");
    drop(inventory);
    // The new CA issues; its inventory holds only its own.
    ok(d, &["issue", "client", "dev2"]);
    let names: Vec<String> = common::records(d)
        .iter()
        .map(|r| r["common_name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["dev2"]);
}

/// An empty inventory beside a CRL that lists revocations is the wrong
/// one (a lost database, a mistyped URL): refused, instead of a CRL that
/// would un-revoke them.
#[test]
fn a_lost_inventory_is_not_taken_for_an_empty_one() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init-ca"]);
    ok(d, &["issue", "client", "dev1"]);
    ok(d, &["revoke", "backend_certs/dev1_cert.pem"]);
    let crl = std::fs::read(d.join("root_cert/crl.pem")).unwrap();
    for f in ["inventory.db", "inventory.db-wal", "inventory.db-shm"] {
        let _ = std::fs::remove_file(d.join("root_cert").join(f));
    }
    let e = fails(d, &["crl"], 1);
    assert!(e.contains("lists 1 revocation"), "{e}");
    assert_eq!(std::fs::read(d.join("root_cert/crl.pem")).unwrap(), crl);
}

/// A certificate this CA signed that the inventory never recorded (a crash
/// between its files and the commit) can still be revoked by file.
#[test]
fn an_unrecorded_certificate_of_ours_can_be_revoked() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init-ca"]);
    ok(d, &["issue", "client", "dev1"]);
    sql(d, "DELETE FROM certificates");
    ok(
        d,
        &[
            "revoke",
            "backend_certs/dev1_cert.pem",
            "--reason",
            "key-compromise",
        ],
    );
    let crl = ok(d, &["inspect", "root_cert/crl.pem"]);
    assert!(crl.contains("key-compromise"), "{crl}");
    assert_eq!(common::records(d).len(), 1);
    // One from another CA is not ours to record.
    let other = tempfile::tempdir().unwrap();
    ok(other.path(), &["init-ca", "--cn", "Other"]);
    ok(other.path(), &["issue", "client", "stranger"]);
    let stranger = other.path().join("backend_certs/stranger_cert.pem");
    let e = fails(d, &["revoke", stranger.to_str().unwrap()], 1);
    assert!(e.contains("not in the inventory"), "{e}");
}

/// Inside the CA folder a CRL goes only to `crl.pem`: `--out` at the lock,
/// the archive or the inventory is refused.
#[test]
fn a_crl_never_lands_on_the_cas_own_files() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init-ca"]);
    ok(d, &["crl", "--out", "root_cert/crl.pem"]);
    for target in [
        "root_cert/.lock",
        "root_cert/inventory.db",
        "root_cert/root_ca.key",
    ] {
        let before = std::fs::read(d.join(target)).unwrap();
        let e = fails(d, &["crl", "--out", target], 1);
        assert!(e.contains("inside the CA folder"), "{target}: {e}");
        assert_eq!(std::fs::read(d.join(target)).unwrap(), before, "{target}");
    }
}

/// An import interrupted after its commit (the file not yet renamed) runs
/// again without duplicates; a revocation only the file has is applied;
/// the CRL number continues from the larger counter.
#[test]
fn an_import_interrupted_before_its_rename_is_repeated_safely() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init-ca"]);
    let jsonl = d.join("root_cert/inventory.jsonl");
    let line = |status: &str| {
        format!(
            "{{\"serial\":\"0A\",\"subject\":\"CN=a\",\"profile\":\"client\",\
             \"not_before\":\"2026-01-01T00:00:00Z\",\"not_after\":\"2099-01-01T00:00:00Z\",\
             \"sha256\":\"00\",\"cert_path\":\"backend_certs/a_cert.pem\",\"status\":{status}}}\n"
        )
    };
    std::fs::write(&jsonl, line("{\"state\":\"valid\"}")).unwrap();
    std::fs::write(d.join("root_cert/crl_number"), "41\n").unwrap();
    assert_eq!(common::records(d).len(), 1);
    // Again, as if the rename had not happened, now with a revocation.
    std::fs::write(
        &jsonl,
        line(
            "{\"state\":\"revoked\",\"at\":\"2026-02-01T00:00:00Z\",\"reason\":\"key-compromise\"}",
        ),
    )
    .unwrap();
    std::fs::write(d.join("root_cert/crl_number"), "7\n").unwrap();
    let records = common::records(d);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["status"]["reason"], "key-compromise");
    let crl = ok(d, &["crl", "--json"]);
    let crl: serde_json::Value = serde_json::from_str(&crl).unwrap();
    assert_eq!(crl["number"], 42, "{crl}");
    assert_eq!(crl["revoked"], 1, "{crl}");
}

/// `provision audit` exits 0 on a healthy CA and 1 with one line per
/// problem: a certificate expiring soon, a revoked one still deployed, a
/// duplicate name, a key others can read, a recorded certificate whose file
/// is gone, a certificate of ours the inventory lacks, a CRL due.
#[test]
fn the_audit_finds_what_an_operator_must_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init-ca"]);
    for name in ["dev1", "dev2", "dev3", "dev4", "dev5", "dev6"] {
        ok(d, &["issue", "client", name]);
    }
    ok(d, &["crl"]);
    let clean = common::provision(d, &["audit", "--json"]);
    assert!(
        clean.status.success(),
        "{}",
        String::from_utf8_lossy(&clean.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&clean.stdout).unwrap();
    assert_eq!(report["findings"].as_array().unwrap().len(), 0, "{report}");

    // A broker folder with the plugin is clean; one without it (Mosquitto's
    // acl_file) is a finding that names the subscription hole.
    ok(d, &["issue", "server", "broker", "--dns", "localhost"]);
    ok(d, &["broker-config", "--out", "with-plugin"]);
    let out = common::provision(d, &["audit", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    ok(
        d,
        &[
            "broker-config",
            "--out",
            "acl-only",
            "--without-plugin",
            "--enroll-port",
            "8884",
        ],
    );
    let out = common::provision(d, &["audit"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    for config in ["acl-only/mosquitto.conf", "acl-only/enroll.conf"] {
        assert!(
            text.contains(&format!(
                "{config}: the broker runs without the plugin: its acl_file never checks SUBSCRIBE"
            )),
            "{text}"
        );
    }
    assert!(!text.contains("with-plugin/"), "{text}");
    std::fs::remove_dir_all(d.join("acl-only")).unwrap();

    ok(d, &["issue", "client", "soon", "--days", "10"]);
    ok(d, &["revoke", "backend_certs/dev1_cert.pem"]);
    std::fs::set_permissions(
        d.join("backend_certs/dev2.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    std::fs::remove_file(d.join("backend_certs/dev3_cert.pem")).unwrap();
    sql(d, "DELETE FROM certificates WHERE common_name = 'dev4'");
    ok(
        d,
        &["issue", "client", "dev5", "--force", "--out", "elsewhere"],
    );
    sql(
        d,
        "UPDATE certificates SET revoked_at = NULL, revocation_reason = NULL \
         WHERE common_name = 'dev5' AND revoked_at IS NOT NULL",
    );
    let out = common::provision(d, &["audit", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the audit found 6 thing(s)"), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let checks: Vec<(String, String)> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["check"].as_str().unwrap().to_owned(),
                f["name"]
                    .as_str()
                    .or(f["path"].as_str())
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    for (check, about) in [
        ("expiring", "soon"),
        ("revoked_still_deployed", "dev1"),
        ("duplicate_name", "dev5"),
        ("key_permissions", "backend_certs/dev2.key"),
        ("missing_files", "dev3"),
        ("unrecorded", "backend_certs/dev4_cert.pem"),
    ] {
        assert!(
            checks.iter().any(|(c, a)| c == check && a.ends_with(about)),
            "{check} {about} not in {checks:?}"
        );
    }
    let text = common::provision(d, &["audit"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("dev2.key: mode 0644") && text.contains("chmod 600"),
        "{text}"
    );
}
