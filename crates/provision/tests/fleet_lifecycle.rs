//! `fleet` keeps what is still right and replaces what is not: a revoked
//! identity, one about to expire, one whose manifest entry changed. The
//! replaced certificate is revoked as superseded, and the CRL says so.

#![allow(clippy::unwrap_used)]

use std::path::Path;

mod common;

use common::ok;

fn manifest(d: &Path, device: &str) {
    std::fs::write(
        d.join("fleet.toml"),
        format!("[ca]\ndir = \"root_cert\"\ncommon_name = \"Life Root\"\n[[devices]]\n{device}\n"),
    )
    .unwrap();
}

fn serial(d: &Path) -> String {
    let shown = ok(d, &["inspect", "backend_certs/dev1_cert.pem", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&shown).unwrap();
    json["serial"].as_str().unwrap().to_owned()
}

/// (serial, status as JSON text) of every inventory record.
fn statuses(d: &Path) -> Vec<(String, String)> {
    let list: serde_json::Value = serde_json::from_str(&ok(d, &["list", "--json"])).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["serial"].as_str().unwrap().to_owned(),
                r["status"].to_string(),
            )
        })
        .collect()
}

#[test]
fn a_revoked_identity_is_issued_again() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    manifest(d, "name = \"dev1\"");
    ok(d, &["fleet", "fleet.toml"]);
    let first = serial(d);
    ok(d, &["revoke", "backend_certs/dev1_cert.pem"]);
    let out = ok(d, &["fleet", "fleet.toml"]);
    assert!(out.contains("1 issued"), "{out}");
    assert_ne!(serial(d), first, "a new certificate");
    let again = ok(d, &["fleet", "fleet.toml"]);
    assert!(again.contains("0 issued"), "then kept: {again}");
}

#[test]
fn a_changed_entry_is_reissued_and_the_old_certificate_superseded() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    manifest(d, "name = \"dev1\"\norganization = \"Old Org\"");
    ok(d, &["fleet", "fleet.toml"]);
    let first = serial(d);
    for (change, check) in [
        ("name = \"dev1\"\norganization = \"New Org\"", "O=New Org"),
        (
            "name = \"dev1\"\norganization = \"New Org\"\nkey_type = \"ed25519\"",
            "Ed25519",
        ),
    ] {
        manifest(d, change);
        let out = ok(d, &["fleet", "fleet.toml"]);
        assert!(out.contains("1 issued"), "{change}: {out}");
        let shown = ok(d, &["inspect", "backend_certs/dev1_cert.pem"]);
        assert!(shown.contains(check), "{change}: {shown}");
    }
    let records = statuses(d);
    assert_eq!(records.len(), 3, "{records:?}");
    let superseded = records
        .iter()
        .filter(|(_, s)| s.contains("superseded"))
        .count();
    assert_eq!(superseded, 2, "both replaced certificates: {records:?}");
    assert!(
        records
            .iter()
            .any(|(s, st)| *s == first && st.contains("superseded"))
    );
    let crl = ok(d, &["inspect", "root_cert/crl.pem"]);
    assert!(crl.contains(&first) && crl.contains("superseded"), "{crl}");
    let again = ok(d, &["fleet", "fleet.toml"]);
    assert!(again.contains("0 issued"), "then kept: {again}");
}

#[test]
fn an_identity_inside_its_renewal_window_is_renewed() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    manifest(d, "name = \"dev1\"\ndays = 10");
    ok(d, &["fleet", "fleet.toml"]);
    let kept = ok(d, &["fleet", "fleet.toml"]);
    assert!(kept.contains("0 issued"), "{kept}");
    let first = serial(d);
    // Renew with less than 30 days left: this one has 10.
    manifest(d, "name = \"dev1\"\ndays = 365\nrenew_before_days = 30");
    let out = ok(d, &["fleet", "fleet.toml"]);
    assert!(out.contains("1 issued"), "{out}");
    assert_ne!(serial(d), first);
    assert!(
        statuses(d)
            .iter()
            .any(|(s, st)| *s == first && st.contains("superseded"))
    );
    // The new one has a year: kept from now on.
    let again = ok(d, &["fleet", "fleet.toml"]);
    assert!(again.contains("0 issued"), "{again}");
    // A window as long as the lifetime would replace it on every run.
    manifest(d, "name = \"dev1\"\ndays = 365\nrenew_before_days = 365");
    let e = common::fails(d, &["fleet", "fleet.toml"], 1);
    assert!(e.contains("renew_before_days"), "{e}");
}

/// A broker with a wildcard name in the manifest gets it, and is kept on
/// the next run (not replaced for "names changed" every time).
#[test]
fn a_wildcard_broker_is_issued_once() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(
        d.join("fleet.toml"),
        "[ca]\ndir = \"root_cert\"\n[[broker]]\nname = \"mq\"\ndns = [\"*.mq.example.com\", \"mq.example.com\"]\n",
    )
    .unwrap();
    ok(d, &["fleet", "fleet.toml"]);
    let shown = ok(d, &["inspect", "backend_certs/mq_cert.pem"]);
    assert!(shown.contains("*.mq.example.com"), "{shown}");
    let again = ok(d, &["fleet", "fleet.toml"]);
    assert!(again.contains("0 issued"), "{again}");
}

/// One valid certificate per CN across the inventory: a name twice in a
/// manifest is refused. An identity renewed elsewhere (here by `issue`,
/// as a device renewing over MQTT would be) is not reissued by the next
/// fleet run: the inventory's current certificate for the name decides,
/// not only the file in the fleet's folder.
#[test]
fn an_identity_renewed_elsewhere_is_left_to_its_new_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(
        d.join("twice.toml"),
        "[ca]\ndir = \"root_cert\"\n[[devices]]\nname = \"dev1\"\n[[devices]]\nname = \"dev1\"\nout = \"other\"\n",
    )
    .unwrap();
    let e = common::fails(d, &["fleet", "twice.toml"], 1);
    assert!(e.contains("appears twice"), "{e}");
    manifest(d, "name = \"dev1\"");
    ok(d, &["fleet", "fleet.toml"]);
    let factory = serial(d);
    ok(d, &["issue", "client", "dev1", "--out", "elsewhere"]);
    let renewed = {
        let shown = ok(d, &["inspect", "elsewhere/dev1_cert.pem", "--json"]);
        let json: serde_json::Value = serde_json::from_str(&shown).unwrap();
        json["serial"].as_str().unwrap().to_owned()
    };
    let out = ok(d, &["fleet", "fleet.toml", "--json"]);
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["issued"], 0, "{out}");
    assert_eq!(summary["renewed_elsewhere"], 1, "{out}");
    assert_eq!(
        serial(d),
        factory,
        "the fleet's files are left as they were"
    );
    let valid: Vec<String> = statuses(d)
        .into_iter()
        .filter(|(_, s)| !s.contains("revoked"))
        .map(|(serial, _)| serial)
        .collect();
    assert_eq!(valid, std::slice::from_ref(&renewed), "{:?}", statuses(d));
    // Nor when the fleet's own files are gone (expired or deleted): the
    // identity lives on in its renewed certificate.
    for f in ["dev1.key", "dev1_csr.pem", "dev1_cert.pem"] {
        std::fs::remove_file(d.join("backend_certs").join(f)).unwrap();
    }
    let out = ok(d, &["fleet", "fleet.toml", "--json"]);
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["issued"], 0, "{out}");
    let valid: Vec<String> = statuses(d)
        .into_iter()
        .filter(|(_, s)| !s.contains("revoked"))
        .map(|(serial, _)| serial)
        .collect();
    assert_eq!(valid, [renewed], "{:?}", statuses(d));
}

/// A CN (the MQTT username) has one valid certificate: issuing it again
/// revokes the earlier one as superseded.
#[test]
fn issuing_a_name_again_supersedes_its_earlier_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init-ca"]);
    ok(d, &["issue", "client", "dev1"]);
    let first = serial(d);
    let out = ok(d, &["issue", "client", "dev1", "--force"]);
    assert!(out.contains(&format!("superseded:  {first}")), "{out}");
    let records = statuses(d);
    let valid: Vec<_> = records
        .iter()
        .filter(|(_, s)| s.contains("valid"))
        .collect();
    assert_eq!(valid.len(), 1, "{records:?}");
    assert!(
        records
            .iter()
            .any(|(s, st)| *s == first && st.contains("superseded"))
    );
}

/// Services and readers come from their own manifest tables, with the
/// role in their certificates and the inventory; `[acl]` replaces the
/// default topic rules in the broker's `acl` file; an identity whose role
/// changes is reissued.
#[test]
fn roles_come_from_the_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let write = |services_or_devices: &str| {
        std::fs::write(
            d.join("fleet.toml"),
            format!(
                "[ca]\ndir = \"root_cert\"\n[[broker]]\nname = \"broker\"\ndns = [\"localhost\"]\n\
                 [[devices]]\nname = \"dev1\"\n[[{services_or_devices}]]\nname = \"ingest\"\n\
                 [[readers]]\nprefix = \"dash-\"\ncount = 2\n\
                 [acl]\ndevice = [\"readwrite sensors/{{name}}/#\"]\n"
            ),
        )
        .unwrap();
    };
    write("services");
    ok(d, &["fleet", "fleet.toml"]);
    let roles: Vec<(String, String)> = common::records(d)
        .iter()
        .map(|r| {
            (
                r["common_name"].as_str().unwrap().to_owned(),
                r["role"].as_str().unwrap_or("-").to_owned(),
            )
        })
        .collect();
    for expected in [
        ("broker", "-"),
        ("dev1", "device"),
        ("ingest", "service"),
        ("dash-1", "reader"),
        ("dash-2", "reader"),
    ] {
        assert!(
            roles.contains(&(expected.0.to_owned(), expected.1.to_owned())),
            "{expected:?} in {roles:?}"
        );
    }
    // The broker plugin's rules: role templates, no identity named.
    ok(d, &["broker-config", "--out", "broker"]);
    let rules = std::fs::read_to_string(d.join("broker/rules")).unwrap();
    assert!(
        rules.contains("[device]\nreadwrite sensors/{name}/#\n"),
        "{rules}"
    );
    assert!(
        !rules.contains("devices/{name}"),
        "the manifest's rules replace the defaults: {rules}"
    );
    assert!(
        rules.contains(
            "[service]\nread devices/#\nwrite fleet/broadcast/#\nshare ingest devices/#\n"
        ),
        "{rules}"
    );
    assert!(
        !rules.contains("ingest\n[") && !rules.contains("dash-1"),
        "{rules}"
    );
    // Without the plugin: Mosquitto's acl_file, naming each non-device.
    ok(
        d,
        &["broker-config", "--out", "broker-acl", "--without-plugin"],
    );
    let acl = std::fs::read_to_string(d.join("broker-acl/acl")).unwrap();
    assert!(acl.contains("pattern readwrite sensors/%u/#"), "{acl}");
    assert!(!acl.contains("devices/%u"), "{acl}");
    assert!(acl.contains("user ingest\ntopic read devices/#"), "{acl}");
    assert!(acl.contains("user dash-1\n"), "{acl}");
    // ingest is renewed once (its first certificate superseded: a
    // connection may still be on it), then becomes a device: reissued, and
    // both earlier certificates revoked as privilege-withdrawn (not merely
    // superseded), so that the brokers' plugins take any connection on
    // them off.
    ok(
        d,
        &["issue", "client", "ingest", "--role", "service", "--force"],
    );
    write("devices");
    let out = ok(d, &["fleet", "fleet.toml", "--json"]);
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["issued"], 1, "{out}");
    assert_eq!(summary["role_changed"][0], "ingest", "{out}");
    let reasons: Vec<String> = common::records(d)
        .iter()
        .filter(|r| r["common_name"] == "ingest")
        .map(|r| r["status"]["reason"].as_str().unwrap_or("valid").to_owned())
        .collect();
    assert_eq!(
        reasons,
        ["privilege-withdrawn", "privilege-withdrawn", "valid"],
        "{reasons:?}"
    );
    let acl = std::fs::read_to_string(d.join("broker-acl/acl")).unwrap();
    assert!(
        !acl.contains("user ingest"),
        "refreshed by the fleet run: {acl}"
    );
}

/// A manifest change wins over a renewal elsewhere: a service renewed by
/// `issue` (as over MQTT) and then made a device in the manifest is
/// reissued as a device, its renewed certificate withdrawn (not kept with
/// `read devices/#`); a renewed device whose manifest subject changed is
/// reissued too; an unchanged renewed one is still left alone.
#[test]
fn a_manifest_change_wins_over_a_renewal_elsewhere() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let write = |svc: &str, dev1: &str| {
        std::fs::write(
            d.join("fleet.toml"),
            format!(
                "[ca]\ndir = \"root_cert\"\n[[{svc}]]\nname = \"svc\"\n\
                 [[devices]]\nname = \"dev1\"\n{dev1}\n[[devices]]\nname = \"dev2\"\n"
            ),
        )
        .unwrap();
    };
    write("services", "");
    // A dry run first: the plan, nothing written.
    let planned: serde_json::Value =
        serde_json::from_str(&ok(d, &["fleet", "fleet.toml", "--dry-run", "--json"])).unwrap();
    assert_eq!(planned["ca_created"], true, "{planned}");
    assert_eq!(planned["steps"].as_array().unwrap().len(), 3, "{planned}");
    assert!(!d.join("root_cert").exists() && !d.join("backend_certs").exists());
    ok(d, &["fleet", "fleet.toml"]);
    let mut renewed = Vec::new();
    for (name, role) in [("svc", "service"), ("dev1", "device"), ("dev2", "device")] {
        let out = ok(
            d,
            &[
                "issue",
                "client",
                name,
                "--role",
                role,
                "--out",
                "elsewhere",
                "--json",
            ],
        );
        let json: serde_json::Value = serde_json::from_str(&out).unwrap();
        renewed.push(json["serial"].as_str().unwrap().to_owned());
    }
    write("devices", "organization = \"New Org\"");
    // The plan says what the run will do, and why, and changes nothing.
    let before = common::records(d);
    let planned: serde_json::Value =
        serde_json::from_str(&ok(d, &["fleet", "fleet.toml", "--dry-run", "--json"])).unwrap();
    let step = |name: &str| {
        planned["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s[0] == name)
            .unwrap()[1]
            .clone()
    };
    assert_eq!(step("svc")["step"], "reissue", "{planned}");
    assert_eq!(step("svc")["role_changed"], true, "{planned}");
    assert_eq!(step("dev1")["step"], "reissue", "{planned}");
    assert!(
        step("dev1")["why"].as_str().unwrap().contains("subject"),
        "{planned}"
    );
    assert_eq!(step("dev2")["step"], "renewed_elsewhere", "{planned}");
    let text = ok(d, &["fleet", "fleet.toml", "--dry-run"]);
    assert!(
        text.contains("2 to issue anew") && text.contains("1 left to a renewal"),
        "{text}"
    );
    assert_eq!(common::records(d), before, "a dry run records nothing");
    let out = ok(d, &["fleet", "fleet.toml", "--json"]);
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["issued"], 2, "{out}");
    assert_eq!(summary["renewed_elsewhere"], 1, "dev2 only: {out}");
    assert_eq!(summary["role_changed"][0], "svc", "{out}");
    let status = |serial: &str| {
        common::records(d)
            .into_iter()
            .find(|r| r["serial"] == serial)
            .unwrap()["status"]
            .clone()
    };
    assert_eq!(status(&renewed[0])["reason"], "privilege-withdrawn");
    assert_eq!(status(&renewed[1])["reason"], "superseded");
    assert_eq!(status(&renewed[2])["state"], "valid");
    let current: Vec<(String, String)> = common::records(d)
        .into_iter()
        .filter(|r| r["status"]["state"] == "valid")
        .map(|r| {
            (
                r["common_name"].as_str().unwrap().to_owned(),
                format!("{} {}", r["role"], r["subject"]),
            )
        })
        .collect();
    assert!(
        current.contains(&("svc".into(), "\"device\" \"CN=svc\"".into())),
        "{current:?}"
    );
    assert!(
        current
            .iter()
            .any(|(n, s)| n == "dev1" && s.contains("O=New Org")),
        "{current:?}"
    );
    let shown = ok(d, &["inspect", "backend_certs/svc_cert.pem"]);
    assert!(shown.contains("device"), "{shown}");
}

/// A dry run against a CA folder with no inventory yet creates none: the
/// plan reads, it does not write.
#[test]
fn a_dry_run_makes_no_inventory() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ok(d, &["init-ca"]);
    for entry in std::fs::read_dir(d.join("root_cert")).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("inventory.db")
        {
            std::fs::remove_file(path).unwrap();
        }
    }
    manifest(d, "name = \"dev1\"");
    let out = ok(d, &["fleet", "fleet.toml", "--dry-run"]);
    assert!(out.contains("1 to issue"), "{out}");
    assert!(!d.join("root_cert/inventory.db").exists());
    assert!(!d.join("backend_certs").exists());
}
