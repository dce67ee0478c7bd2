//! The plugin's decisions against a fake broker: certificates and CRLs
//! from pki-core's CA, files in a temp dir, the broker's calls recorded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use pki_core::{
    CertificateAuthority, CrlParams, Csr, CsrParams, IssueParams, KeyPair, KeyType, Profile,
    RevocationReason, RevokedEntry, Subject, SubjectAltName, Validity,
};

use super::*;

#[derive(Default)]
struct Fake {
    certs: HashMap<ClientKey, Vec<u8>>,
    ids: HashMap<ClientKey, String>,
    usernames: HashMap<ClientKey, String>,
    clean: HashMap<ClientKey, bool>,
    kicked: RefCell<Vec<String>>,
    reloads: RefCell<usize>,
    log: RefCell<Vec<(Level, String)>>,
}

impl Broker for Fake {
    fn certificate(&self, client: ClientKey) -> Option<Vec<u8>> {
        self.certs.get(&client).cloned()
    }
    fn client_id(&self, client: ClientKey) -> Option<String> {
        self.ids.get(&client).cloned()
    }
    fn username(&self, client: ClientKey) -> Option<String> {
        self.usernames.get(&client).cloned()
    }
    fn ends_with_connection(&self, client: ClientKey) -> bool {
        self.clean.get(&client).copied().unwrap_or(false)
    }
    fn reload(&self) {
        *self.reloads.borrow_mut() += 1;
    }
    fn log(&self, level: Level, message: &str) {
        self.log.borrow_mut().push((level, message.to_owned()));
    }
}

impl Fake {
    /// One tick; what it asks to kick is recorded.
    fn tick(&self, plugin: &mut Plugin, now: Instant) {
        let kicks = plugin.tick(self, now);
        self.kicked.borrow_mut().extend(kicks);
    }

    /// A client connected with this certificate, its CN as its username
    /// and client id.
    fn connect(&mut self, key: usize, name: &str, der: &[u8]) -> ClientKey {
        let client = ClientKey(key);
        self.certs.insert(client, der.to_vec());
        self.ids.insert(client, name.to_owned());
        self.usernames.insert(client, name.to_owned());
        client
    }

    /// Its socket closed: no certificate any more.
    fn close(&mut self, client: ClientKey) {
        self.certs.remove(&client);
    }

    fn logged(&self, needle: &str) -> bool {
        self.log.borrow().iter().any(|(_, m)| m.contains(needle))
    }
}

struct World {
    ca: CertificateAuthority,
    dir: tempfile::TempDir,
    crl_number: u64,
}

impl World {
    fn new() -> Self {
        let ca = CertificateAuthority::new_root(
            &Subject::new("Plugin Test Root").unwrap(),
            KeyPair::generate(KeyType::P256).unwrap(),
            Validity::days_from_now(30).unwrap(),
        )
        .unwrap();
        let world = Self {
            ca,
            dir: tempfile::tempdir().unwrap(),
            crl_number: 0,
        };
        world.write_rules(
            "[device]\nreadwrite devices/{name}/#\nread fleet/broadcast/#\n\
             [service]\nread devices/#\nshare ingest devices/#\n",
        );
        world
    }

    fn options(&self) -> Options {
        Options::from_pairs([
            ("rules", self.dir.path().join("rules").to_str().unwrap()),
            ("crl", self.dir.path().join("crl.pem").to_str().unwrap()),
        ])
        .unwrap()
    }

    fn write_rules(&self, text: &str) {
        // Renamed into place, as provision writes it.
        let tmp = self.dir.path().join("rules.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(tmp, self.dir.path().join("rules")).unwrap();
    }

    fn issue(&self, name: &str, role: Option<&str>) -> (Vec<u8>, Vec<u8>) {
        let key = KeyPair::generate(KeyType::P256).unwrap();
        let csr = Csr::new(&CsrParams::new(Subject::new(name).unwrap()), &key).unwrap();
        let mut params = IssueParams::new(Profile::Client, Validity::days_from_now(10).unwrap());
        if let Some(role) = role {
            params
                .sans
                .push(SubjectAltName::uri(format!("urn:mqtt-mtls:role:{role}")).unwrap());
        }
        let cert = self.ca.sign(&csr, &params).unwrap().certificate;
        (cert.der().to_vec(), cert.serial().as_bytes().to_vec())
    }

    fn write_crl(&mut self, revoked: &[(&[u8], RevocationReason)]) {
        self.crl_number += 1;
        let entries: Vec<RevokedEntry> = revoked
            .iter()
            .map(|(serial, reason)| RevokedEntry {
                serial: pki_core::Serial::from_bytes(serial).unwrap(),
                revoked_at: SystemTime::now(),
                reason: *reason,
            })
            .collect();
        let now = SystemTime::now();
        let crl = self
            .ca
            .crl(
                &entries,
                &CrlParams {
                    number: self.crl_number,
                    this_update: now,
                    next_update: now + Duration::from_secs(3600),
                },
            )
            .unwrap();
        let tmp = self.dir.path().join("crl.tmp");
        std::fs::write(&tmp, crl.to_pem()).unwrap();
        std::fs::rename(tmp, self.dir.path().join("crl.pem")).unwrap();
    }
}

/// Ticks until the CRL read in the background has been applied.
fn settle(plugin: &mut Plugin, broker: &Fake, clock: &mut Instant) {
    for _ in 0..500 {
        *clock += POLL;
        broker.tick(plugin, *clock);
        if !plugin.is_reading_crl() {
            *clock += POLL;
            broker.tick(plugin, *clock);
            if !plugin.is_reading_crl() {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("the CRL was never applied");
}

#[test]
fn options_are_checked() {
    let e = Options::from_pairs([("rules", "r")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("plugin_opt_crl") && e.contains("missing"), "{e}");
    let e = Options::from_pairs([("rules", "r"), ("crl", "c"), ("acl", "x")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("plugin_opt_acl") && e.contains("unknown"), "{e}");
}

#[test]
fn each_request_is_checked_against_the_role() {
    let mut world = World::new();
    world.write_crl(&[]);
    let mut broker = Fake::default();
    let (d1, _) = world.issue("d1", Some("device"));
    let (old, _) = world.issue("old", None);
    let (svc, _) = world.issue("ingest", Some("service"));
    let (rdr, _) = world.issue("dash", Some("reader"));
    let d1 = broker.connect(1, "d1", &d1);
    let old = broker.connect(2, "old", &old);
    let svc = broker.connect(3, "ingest", &svc);
    let rdr = broker.connect(4, "dash", &rdr);
    let mut plugin = Plugin::new(world.options(), &broker);
    assert!(plugin.is_ready());
    use Access::*;
    for (client, access, topic, allowed) in [
        (d1, Subscribe, "devices/d1/#", true),
        (d1, Subscribe, "devices/#", false),
        (d1, Subscribe, "$share/ingest/devices/+/telemetry", false),
        (d1, Unsubscribe, "anything/#", true),
        (d1, Write, "devices/d1/x", true),
        (d1, Write, "devices/d2/x", false),
        (d1, Read, "fleet/broadcast/x", true),
        // No role SAN: a device.
        (old, Write, "devices/old/x", true),
        (old, Subscribe, "devices/#", false),
        (svc, Subscribe, "$share/ingest/devices/+/telemetry", true),
        (svc, Subscribe, "$share/pki/devices/#", false),
        (svc, Read, "devices/d1/x", true),
        // A role without a section gets nothing.
        (rdr, Read, "devices/d1/x", false),
        (rdr, Subscribe, "#", false),
    ] {
        assert_eq!(
            plugin.acl_check(&broker, client, access, topic),
            allowed,
            "{client:?} {access:?} {topic}"
        );
    }
    assert!(broker.logged("denied SUBSCRIBE to \"devices/#\" by d1"));
    assert!(broker.kicked.borrow().is_empty());
}

#[test]
fn a_certificate_is_read_once_per_connection() {
    let mut world = World::new();
    world.write_crl(&[]);
    let mut broker = Fake::default();
    let (der, _) = world.issue("d1", None);
    let client = broker.connect(1, "d1", &der);
    let mut plugin = Plugin::new(world.options(), &broker);
    assert!(plugin.acl_check(&broker, client, Access::Write, "devices/d1/x"));
    // Replaced under the plugin's feet: the connection keeps its identity.
    let (other, _) = world.issue("d2", None);
    broker.certs.insert(client, other);
    assert!(plugin.acl_check(&broker, client, Access::Write, "devices/d1/x"));
    // A new connection at the same address after a disconnect is read anew.
    plugin.disconnect(&broker, client);
    broker.usernames.insert(client, "d2".into());
    assert!(!plugin.acl_check(&broker, client, Access::Write, "devices/d1/x"));
    assert!(plugin.acl_check(&broker, client, Access::Write, "devices/d2/x"));
}

#[test]
fn what_gets_nothing() {
    let mut world = World::new();
    world.write_crl(&[]);
    let mut broker = Fake::default();
    let mut plugin = Plugin::new(world.options(), &broker);
    // No certificate and never seen: may publish, subscribe, leave a
    // Will: nothing. A delivery is queued (an offline session the broker
    // kept across its restart: Mosquitto checks it again against the
    // certificate the client reconnects with).
    let bare = ClientKey(9);
    broker.ids.insert(bare, "bare".into());
    assert!(!plugin.acl_check(&broker, bare, Access::Write, "devices/bare/x"));
    assert!(!plugin.acl_check(&broker, bare, Access::Subscribe, "devices/bare/x"));
    assert!(plugin.acl_check(&broker, bare, Access::Read, "devices/bare/x"));
    // A malformed certificate.
    let bad = broker.connect(1, "bad", b"not a certificate");
    assert!(!plugin.acl_check(&broker, bad, Access::Read, "fleet/broadcast/x"));
    assert!(broker.logged("refusing everything to bad: the certificate does not parse"));
    // A CN that is not the username the broker gave it.
    let (der, _) = world.issue("d1", None);
    let liar = broker.connect(2, "d1", &der);
    broker.usernames.insert(liar, "d2".into());
    assert!(!plugin.acl_check(&broker, liar, Access::Write, "devices/d1/x"));
    // A name that would widen its rules.
    let (der, _) = world.issue("a+b", None);
    let wild = broker.connect(3, "a+b", &der);
    assert!(!plugin.acl_check(&broker, wild, Access::Write, "devices/a+b/x"));
    assert!(!plugin.acl_check(&broker, wild, Access::Read, "fleet/broadcast/x"));
}

#[test]
fn an_offline_session_and_a_last_will_keep_their_identity() {
    let mut world = World::new();
    world.write_crl(&[]);
    let mut broker = Fake::default();
    let (der, _) = world.issue("ingest", Some("service"));
    let persistent = broker.connect(1, "ingest", &der);
    let (der, _) = world.issue("d1", None);
    let clean = broker.connect(2, "d1", &der);
    broker.clean.insert(clean, true);
    let mut plugin = Plugin::new(world.options(), &broker);
    let mut clock = Instant::now();
    assert!(plugin.acl_check(&broker, persistent, Access::Subscribe, "devices/+/x"));
    assert!(plugin.acl_check(&broker, clean, Access::Write, "devices/d1/x"));
    for client in [persistent, clean] {
        plugin.disconnect(&broker, client);
        broker.close(client);
    }
    // The Last Will, checked after the socket closed.
    assert!(plugin.acl_check(&broker, clean, Access::Write, "devices/d1/status"));
    assert!(!plugin.acl_check(&broker, clean, Access::Write, "devices/d2/status"));
    // Deliveries queued for the offline persistent session.
    assert!(plugin.acl_check(&broker, persistent, Access::Read, "devices/d1/x"));
    clock += Duration::from_secs(1);
    broker.tick(&mut plugin, clock);
    assert!(plugin.acl_check(&broker, persistent, Access::Read, "devices/d1/x"));
    // The clean session is gone after the tick.
    assert!(!plugin.acl_check(&broker, clean, Access::Write, "devices/d1/status"));
}

#[test]
fn a_revocation_denies_and_kicks_exactly_the_revoked_and_reloads_the_broker() {
    let mut world = World::new();
    world.write_crl(&[]);
    let mut broker = Fake::default();
    let (x, x_serial) = world.issue("dev-x", None);
    let (y, y_serial) = world.issue("dev-y", None);
    let (z, _) = world.issue("dev-z", None);
    let x = broker.connect(1, "dev-x", &x);
    let y = broker.connect(2, "dev-y", &y);
    let z = broker.connect(3, "dev-z", &z);
    let mut plugin = Plugin::new(world.options(), &broker);
    let mut clock = Instant::now();
    for (client, name) in [(x, "dev-x"), (y, "dev-y"), (z, "dev-z")] {
        assert!(plugin.acl_check(
            &broker,
            client,
            Access::Subscribe,
            &format!("devices/{name}/#")
        ));
    }
    settle(&mut plugin, &broker, &mut clock);
    assert_eq!(*broker.reloads.borrow(), 0, "nothing changed yet");

    // X's key is compromised; Y was renewed (superseded).
    world.write_crl(&[
        (&x_serial, RevocationReason::KeyCompromise),
        (&y_serial, RevocationReason::Superseded),
    ]);
    settle(&mut plugin, &broker, &mut clock);
    assert_eq!(*broker.kicked.borrow(), ["dev-x"]);
    assert_eq!(*broker.reloads.borrow(), 1);
    assert!(!plugin.acl_check(&broker, x, Access::Write, "devices/dev-x/x"));
    assert!(!plugin.acl_check(&broker, x, Access::Subscribe, "devices/dev-x/#"));
    assert!(plugin.acl_check(&broker, y, Access::Write, "devices/dev-y/x"));
    assert!(plugin.acl_check(&broker, z, Access::Write, "devices/dev-z/x"));

    // X is back before the broker's reload refuses its handshake: denied
    // and kicked again at the next tick.
    plugin.disconnect(&broker, x);
    let (x_again, _) = (broker.certs[&x].clone(), ());
    let x2 = broker.connect(4, "dev-x", &x_again);
    assert!(!plugin.acl_check(&broker, x2, Access::Read, "devices/dev-x/x"));
    clock += Duration::from_millis(1);
    broker.tick(&mut plugin, clock);
    assert_eq!(*broker.kicked.borrow(), ["dev-x", "dev-x"]);
    assert!(broker.logged("disconnecting dev-x: its certificate is revoked"));

    // The same CRL re-signed (a new number): the broker reloads again, so
    // its copy never lapses; nobody new is kicked.
    world.write_crl(&[
        (&x_serial, RevocationReason::KeyCompromise),
        (&y_serial, RevocationReason::Superseded),
    ]);
    settle(&mut plugin, &broker, &mut clock);
    assert_eq!(*broker.reloads.borrow(), 2);
    assert_eq!(
        broker.kicked.borrow().len(),
        2 + 1,
        "X's second connection again"
    );
}

#[test]
fn an_unreadable_file_refuses_everything_until_it_is_readable() {
    let mut world = World::new();
    world.write_crl(&[]);
    let mut broker = Fake::default();
    let (der, _) = world.issue("d1", None);
    let d1 = broker.connect(1, "d1", &der);
    let mut plugin = Plugin::new(world.options(), &broker);
    let mut clock = Instant::now();
    assert!(plugin.acl_check(&broker, d1, Access::Write, "devices/d1/x"));

    // A truncated CRL.
    let crl = world.dir.path().join("crl.pem");
    let text = std::fs::read_to_string(&crl).unwrap();
    std::fs::write(&crl, &text[..text.len() / 2]).unwrap();
    settle(&mut plugin, &broker, &mut clock);
    assert!(!plugin.is_ready());
    assert!(!plugin.acl_check(&broker, d1, Access::Write, "devices/d1/x"));
    assert!(broker.logged("refusing every client"));
    world.write_crl(&[]);
    settle(&mut plugin, &broker, &mut clock);
    assert!(plugin.acl_check(&broker, d1, Access::Write, "devices/d1/x"));

    // Broken rules, then fixed ones with a new rule: the live connection
    // gets the new rules.
    world.write_rules("[device]\nadmin #\n");
    clock += POLL;
    broker.tick(&mut plugin, clock);
    assert!(!plugin.acl_check(&broker, d1, Access::Write, "devices/d1/x"));
    assert!(broker.logged("rules:2: "));
    world.write_rules("[device]\nwrite sensors/{name}/#\n");
    clock += POLL;
    broker.tick(&mut plugin, clock);
    assert!(!plugin.acl_check(&broker, d1, Access::Write, "devices/d1/x"));
    assert!(plugin.acl_check(&broker, d1, Access::Write, "sensors/d1/x"));

    // A missing file at start.
    std::fs::remove_file(&crl).unwrap();
    let broker = Fake::default();
    let plugin = Plugin::new(world.options(), &broker);
    assert!(!plugin.is_ready());
    assert!(
        broker.logged("refusing every client: reading "),
        "{:?}",
        broker.log
    );
}

#[test]
fn a_client_that_made_no_check_keeps_its_last_will() {
    let mut world = World::new();
    world.write_crl(&[]);
    let mut broker = Fake::default();
    let (der, _) = world.issue("d1", None);
    let d1 = broker.connect(1, "d1", &der);
    broker.clean.insert(d1, true);
    let mut plugin = Plugin::new(world.options(), &broker);
    // Connected, never published or subscribed: the plugin first hears of
    // it at its disconnect, while the socket is still open.
    plugin.disconnect(&broker, d1);
    broker.close(d1);
    assert!(plugin.acl_check(&broker, d1, Access::Write, "devices/d1/status"));
    assert!(!plugin.acl_check(&broker, d1, Access::Write, "devices/d2/status"));
}

#[test]
fn a_session_follows_its_client_id_to_the_new_connection() {
    let mut world = World::new();
    world.write_crl(&[]);
    let mut broker = Fake::default();
    let (der, serial) = world.issue("ingest", Some("service"));
    let first = broker.connect(1, "ingest", &der);
    let mut plugin = Plugin::new(world.options(), &broker);
    let mut clock = Instant::now();
    assert!(plugin.acl_check(&broker, first, Access::Subscribe, "devices/#"));
    // It reconnects while still connected (a takeover): Mosquitto makes
    // the old connection's session clean and disconnects it, then the new
    // one makes its first check.
    broker.clean.insert(first, true);
    plugin.disconnect(&broker, first);
    broker.close(first);
    let second = broker.connect(2, "ingest", &der);
    assert!(plugin.acl_check(&broker, second, Access::Read, "devices/d1/x"));
    // The old address carries nothing any more: no Will, no rights.
    assert!(!plugin.acl_check(&broker, first, Access::Write, "devices/ingest/x"));
    // The new connection ends with its session kept: its deliveries are
    // checked with its identity, across ticks.
    plugin.disconnect(&broker, second);
    broker.close(second);
    clock += POLL;
    broker.tick(&mut plugin, clock);
    assert!(plugin.acl_check(&broker, second, Access::Read, "devices/d1/x"));
    assert!(!plugin.acl_check(&broker, second, Access::Read, "fleet/x"));
    // Revoked while offline: nothing more is queued for it, and nobody is
    // kicked (it is not connected).
    world.write_crl(&[(&serial, RevocationReason::KeyCompromise)]);
    settle(&mut plugin, &broker, &mut clock);
    assert!(!plugin.acl_check(&broker, second, Access::Read, "devices/d1/x"));
    broker.tick(&mut plugin, clock + POLL);
    assert!(broker.kicked.borrow().is_empty(), "{:?}", broker.kicked);
}

#[test]
fn a_reused_address_neither_grows_the_memory_nor_loses_a_session() {
    let mut world = World::new();
    world.write_crl(&[]);
    let mut broker = Fake::default();
    let (claim, _) = world.issue("d1", None);
    let mut plugin = Plugin::new(world.options(), &broker);
    let mut clock = Instant::now();
    // Thousands of client ids through one address (the allocator reuses
    // it): one entry at a time.
    let k = ClientKey(7);
    for i in 0..2_000 {
        broker.certs.insert(k, claim.clone());
        broker.ids.insert(k, format!("enroll-{i}"));
        broker.usernames.insert(k, "d1".into());
        assert!(plugin.acl_check(&broker, k, Access::Write, "devices/d1/x"));
        plugin.disconnect(&broker, k);
    }
    assert_eq!(plugin.offline.len(), 1);
    assert_eq!(plugin.offline_by_id.len(), 1);
    // A clean session ends at an address, and before the tick a persistent
    // one of another client is kept at the same address: the tick forgets
    // the first, not the second.
    let (der, _) = world.issue("ingest", Some("service"));
    broker.clean.insert(k, true);
    plugin.disconnect(&broker, k);
    broker.certs.insert(k, der);
    broker.ids.insert(k, "ingest".into());
    broker.usernames.insert(k, "ingest".into());
    broker.clean.insert(k, false);
    assert!(plugin.acl_check(&broker, k, Access::Subscribe, "devices/#"));
    plugin.disconnect(&broker, k);
    broker.close(k);
    clock += POLL;
    broker.tick(&mut plugin, clock);
    assert!(plugin.acl_check(&broker, k, Access::Read, "devices/d1/x"));
    assert!(!plugin.acl_check(&broker, k, Access::Read, "fleet/x"));
}

#[test]
fn refusals_are_logged_within_bounds_and_a_missing_tick_is_reported() {
    let mut world = World::new();
    world.write_crl(&[]);
    let mut broker = Fake::default();
    let (der, _) = world.issue("d1", None);
    let d1 = broker.connect(1, "d1", &der);
    let mut plugin = Plugin::new(world.options(), &broker);
    let mut clock = Instant::now();
    broker.tick(&mut plugin, clock);
    for i in 0..100 {
        assert!(!plugin.acl_check(&broker, d1, Access::Subscribe, &format!("other/{i}")));
    }
    let denials = |b: &Fake| {
        b.log
            .borrow()
            .iter()
            .filter(|(_, m)| m.contains("denied SUBSCRIBE"))
            .count()
    };
    assert_eq!(denials(&broker), DENIALS_PER_POLL as usize);
    clock += POLL;
    broker.tick(&mut plugin, clock);
    assert!(broker.logged("90 more SUBSCRIBEs denied"));
    // No tick for 5 s: said once.
    plugin.last_tick = Instant::now() - Duration::from_secs(6);
    assert!(plugin.acl_check(&broker, d1, Access::Write, "devices/d1/x"));
    assert!(plugin.acl_check(&broker, d1, Access::Write, "devices/d1/x"));
    let said = broker
        .log
        .borrow()
        .iter()
        .filter(|(_, m)| m.contains("has not ticked"))
        .count();
    assert_eq!(said, 1);
}
