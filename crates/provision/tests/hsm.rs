//! Keys in hardware: the CA's keys in PKCS#11 tokens (issue #33), here
//! SoftHSM2 (each test's tokens in a folder of its own through
//! `SOFTHSM2_CONF`). The root and the intermediate live in two tokens;
//! what they sign is checked by OpenSSL and a real Mosquitto; the key
//! files record where the keys are and hold no key; the tokens say the
//! keys are sensitive and never extractable; the root's token can go and
//! the intermediate keeps signing. Hostile setups (a wrong PIN, a missing
//! key, a removed token, an unknown URI attribute, a name already taken)
//! are errors naming the URI without its PIN, with nothing written.
//!
//! Devices' and services' keys in tokens (issue #34): made by `csr
//! --key-uri`, they sign their CSRs and every TLS handshake there (the
//! scheme each TLS version and peer asks for, checked by `openssl
//! s_server`), publish to Mosquitto, serve as `provision serve`'s own
//! identity; a token pulled out mid-connection is a classified error until
//! it is back; a second key on a logged-in token needs the same PIN.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use peers::mosquitto::{Mosquitto, free_port};

const ROOT_PIN: &str = "1234";
const INTER_PIN: &str = "5678";

use peers::softhsm::module;

/// A folder with SoftHSM2 tokens of its own, and the CA's working folder.
struct Hsm {
    tokens: peers::softhsm::Tokens,
    conf: PathBuf,
}

impl Hsm {
    /// Tokens `root` and `inter`, each with its PIN.
    fn new() -> Self {
        let tokens = peers::softhsm::Tokens::new();
        std::fs::create_dir(tokens.scratch().join("work")).unwrap();
        tokens.init("root", ROOT_PIN);
        tokens.init("inter", INTER_PIN);
        let conf = tokens.conf.clone();
        Self { tokens, conf }
    }

    fn work(&self) -> PathBuf {
        self.tokens.scratch().join("work")
    }

    fn tokens(&self) -> PathBuf {
        self.tokens.dir()
    }

    /// The root's key in token `root` (`root-key`), the intermediate's in
    /// token `inter` (`inter-key`), each with its PIN's variable; what
    /// the root's `init-ca` printed.
    fn ca_in_two_tokens(&self) -> String {
        let made = self.ok(&[
            "init-ca",
            "--key-uri",
            &uri("root", "root-key"),
            "--pin-env",
            "ROOT_PIN",
        ]);
        self.ok(&[
            "init-ca",
            "--intermediate",
            "--key-uri",
            &uri("inter", "inter-key"),
            "--pin-env",
            "INTER_PIN",
        ]);
        made
    }

    /// The broker's certificate, `broker-config` on a free port, and a
    /// Mosquitto from what it wrote: the broker and its port. Identities
    /// the broker must know are issued before.
    fn broker(&self) -> (Mosquitto, u16) {
        self.ok(&["issue", "server", "broker", "--dns", "localhost"]);
        let port = free_port();
        self.ok(&[
            "broker-config",
            "--out",
            "broker",
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ]);
        (
            Mosquitto::with_config(&self.work().join("broker/mosquitto.conf"), port),
            port,
        )
    }

    /// `provision csr NAME --out OUT --key-uri (token TOKEN) --pin-env VAR`
    /// and `extra`, with the PIN `pin` in `$VAR`.
    fn token_csr(
        &self,
        (name, out): (&str, &str),
        (token, var, pin): (&str, &str, &str),
        extra: &[&str],
    ) -> Output {
        let uri = token_uri(token);
        let mut args = vec![
            "csr",
            name,
            "--out",
            out,
            "--key-uri",
            &uri,
            "--pin-env",
            var,
        ];
        args.extend_from_slice(extra);
        self.provision(&args, &[(var, pin)])
    }

    /// [`Hsm::token_csr`], which must succeed.
    fn token_key(&self, name_out: (&str, &str), token: (&str, &str, &str), extra: &[&str]) {
        let out = self.token_csr(name_out, token, extra);
        assert!(out.status.success(), "{}", text(&out));
    }

    /// `provision sign backend_certs/NAME_csr.pem` for a client
    /// certificate, with `role` when given (the default role otherwise).
    fn sign_client(&self, name: &str, role: Option<&str>) {
        let csr = format!("backend_certs/{name}_csr.pem");
        let mut args = vec!["sign", csr.as_str(), "--profile", "client"];
        if let Some(role) = role {
            args.extend(["--role", role]);
        }
        self.ok(&args);
    }

    fn delete_token(&self, label: &str) {
        self.tokens.delete(label);
    }

    /// `provision ARGS` in the work folder with the tokens and PINs.
    fn provision<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(
        &self,
        args: &[S],
        envs: &[(&str, &str)],
    ) -> Output {
        Command::new(env!("CARGO_BIN_EXE_provision"))
            .current_dir(self.work())
            .env("SOFTHSM2_CONF", &self.conf)
            .env("ROOT_PIN", ROOT_PIN)
            .env("INTER_PIN", INTER_PIN)
            .envs(envs.iter().copied())
            .args(args)
            .output()
            .unwrap()
    }

    fn ok<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(&self, args: &[S]) -> String {
        let out = self.provision(args, &[]);
        assert!(out.status.success(), "provision {args:?}: {}", text(&out));
        text(&out)
    }

    /// A command that must fail (exit 1) without panicking; its output.
    fn fails<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(
        &self,
        args: &[S],
        envs: &[(&str, &str)],
    ) -> String {
        let out = self.provision(args, envs);
        let all = text(&out);
        assert_eq!(out.status.code(), Some(1), "provision {args:?}: {all}");
        assert!(!all.contains("panicked"), "{all}");
        all
    }

    /// The objects of `token` (logged in), as (class, label, guarded):
    /// guarded is whether a private key is sensitive, never extractable
    /// and withholds its value (`CKA_VALUE`). Asked through cryptoki in a
    /// child process (this test binary again, [`token_objects_probe`]):
    /// SoftHSM2 reads `SOFTHSM2_CONF` once per process.
    fn objects(&self, token: &str, pin: &str) -> Vec<(String, String, bool)> {
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "token_objects_probe",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SOFTHSM2_CONF", &self.conf)
            .env(PROBE, format!("{token}\n{pin}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        // The probe ran (and did not just match no test).
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("PROBED\t"),
            "{}",
            text(&out)
        );
        let mut found: Vec<(String, String, bool)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            // libtest's "test NAME ... " may lead the first line.
            .filter_map(|l| l.split_once("OBJECT\t").map(|(_, rest)| rest))
            .map(|l| {
                let mut f = l.split('\t');
                let class = f.next().unwrap().to_owned();
                let label = f.next().unwrap().to_owned();
                (class, label, f.next() == Some("guarded"))
            })
            .collect();
        found.sort();
        found
    }
}

/// Set for the child process of [`Hsm::objects`]: "TOKEN\nPIN".
const PROBE: &str = "MQTT_MTLS_TEST_TOKEN_PROBE";

/// Not a test of its own: run by [`Hsm::objects`] in a child process,
/// lists a token's objects (one `OBJECT` line each); does nothing
/// otherwise.
#[test]
fn token_objects_probe() {
    let Ok(probe) = std::env::var(PROBE) else {
        return;
    };
    let (token, pin) = probe.split_once('\n').unwrap();
    let pkcs11 = Pkcs11::new(module()).unwrap();
    pkcs11
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = pkcs11
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| pkcs11.get_token_info(*s).unwrap().label() == token)
        .unwrap();
    let session = pkcs11.open_ro_session(slot).unwrap();
    session
        .login(UserType::User, Some(&AuthPin::new(Box::from(pin))))
        .unwrap();
    for object in session.find_objects(&[]).unwrap() {
        let attrs = session
            .get_attributes(object, &[AttributeType::Class, AttributeType::Label])
            .unwrap();
        let class = attrs.iter().find_map(|a| match a {
            Attribute::Class(c) => Some(*c),
            _ => None,
        });
        let label = attrs
            .iter()
            .find_map(|a| match a {
                Attribute::Label(l) => Some(String::from_utf8_lossy(l).into_owned()),
                _ => None,
            })
            .unwrap_or_default();
        let guarded = if class == Some(ObjectClass::PRIVATE_KEY) {
            // A sensitive attribute comes back absent (CKR_ATTRIBUTE_SENSITIVE).
            let attrs = session
                .get_attributes(
                    object,
                    &[
                        AttributeType::Sensitive,
                        AttributeType::Extractable,
                        AttributeType::Value,
                    ],
                )
                .unwrap_or_default();
            attrs.contains(&Attribute::Sensitive(true))
                && attrs.contains(&Attribute::Extractable(false))
                && !attrs.iter().any(|a| matches!(a, Attribute::Value(_)))
        } else {
            true
        };
        let class = class.map_or_else(|| "?".to_owned(), |c| c.to_string());
        println!(
            "OBJECT\t{class}\t{label}\t{}",
            if guarded { "guarded" } else { "exposed" }
        );
    }
    println!("PROBED\t{token}");
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn uri(token: &str, object: &str) -> String {
    format!(
        "pkcs11:token={token};object={object}?module-path={}",
        module().display()
    )
}

/// Every file under `dir` holding a PEM private key.
fn pem_keys(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(pem_keys(&path));
        } else if std::fs::read(&path)
            .map(|b| String::from_utf8_lossy(&b).contains("PRIVATE KEY-----"))
            .unwrap_or(false)
        {
            found.push(path);
        }
    }
    found
}

#[test]
fn a_ca_in_two_tokens_issues_a_fleet_that_openssl_and_mosquitto_accept() {
    let hsm = Hsm::new();
    let d = hsm.work();
    let made = hsm.ca_in_two_tokens();
    assert!(
        made.contains("in the token, pkcs11:token=root;object=root-key"),
        "{made}"
    );
    // The key files say where the keys are, and hold none.
    for (file, token) in [("root_ca.key", "root"), ("intermediate_ca.key", "inter")] {
        let record = std::fs::read_to_string(d.join("root_cert").join(file)).unwrap();
        assert!(
            record.starts_with(&format!("pkcs11:token={token};")),
            "{record}"
        );
        assert!(
            !record.contains(ROOT_PIN) && !record.contains(INTER_PIN),
            "{record}"
        );
    }
    std::fs::write(
        d.join("fleet.toml"),
        "[ca]\ndir = \"root_cert\"\n[[devices]]\nprefix = \"dev-\"\ncount = 20\n",
    )
    .unwrap();
    let fleet = hsm.ok(&["fleet", "fleet.toml"]);
    assert!(fleet.contains("20 issued"), "{fleet}");

    // OpenSSL: root → intermediate → device.
    let verify = |cert: &str| {
        Command::new(peers::openssl())
            .current_dir(&d)
            .args(["verify", "-CAfile", "root_cert/root_ca_cert.pem"])
            .args(["-untrusted", "root_cert/intermediate_ca_cert.pem", cert])
            .output()
            .unwrap()
    };
    let out = verify("backend_certs/dev-7_cert.pem");
    assert!(out.status.success(), "{}", text(&out));

    // Mosquitto, configured by broker-config (its CRL signed in the token),
    // takes the device over mTLS.
    let (broker, port) = hsm.broker();
    let out = hsm.provision(
        &[
            "pub",
            "-H",
            "localhost",
            "-p",
            &port.to_string(),
            "-t",
            "devices/dev-3/data",
            "-m",
            "from a token-signed identity",
            "-q",
            "1",
        ]
        .into_iter()
        .chain(common::tls("dev-3").iter().map(String::as_str))
        .collect::<Vec<_>>(),
        &[],
    );
    assert!(out.status.success(), "{}\n{}", text(&out), broker.log());
    assert!(broker.log().contains("dev-3"), "{}", broker.log());

    // The tokens hold the keys, sensitive and never extractable: reading
    // a private key's value gives nothing.
    let root_objects = hsm.objects("root", ROOT_PIN);
    assert_eq!(root_objects.len(), 2, "{root_objects:?}");
    assert!(
        root_objects
            .iter()
            .all(|(_, label, guarded)| label == "root-key" && *guarded)
    );
    let inter_objects = hsm.objects("inter", INTER_PIN);
    assert!(
        inter_objects.iter().all(|(_, _, guarded)| *guarded),
        "{inter_objects:?}"
    );

    // The root's token goes away: the intermediate goes on signing, and
    // revoking and a CRL need no root either.
    hsm.delete_token("root");
    hsm.ok(&["issue", "client", "late"]);
    // A CSR made elsewhere, and a claim, signed in the token too.
    hsm.ok(&["csr", "outside", "--out", "csrs"]);
    hsm.ok(&["sign", "csrs/outside_csr.pem", "--profile", "client"]);
    hsm.ok(&["issue", "claim", "factory", "--allow", "sensor-1"]);
    for cert in ["csrs/outside_cert.pem", "backend_certs/factory_cert.pem"] {
        let out = verify(cert);
        assert!(out.status.success(), "{cert}: {}", text(&out));
    }
    let out = verify("backend_certs/late_cert.pem");
    assert!(out.status.success(), "{}", text(&out));
    hsm.ok(&[
        "revoke",
        "backend_certs/dev-1_cert.pem",
        "--reason",
        "key-compromise",
    ]);
    hsm.ok(&["crl"]);
    let out = Command::new(peers::openssl())
        .current_dir(&d)
        .args(["verify", "-crl_check", "-CRLfile", "root_cert/crl.pem"])
        .args(["-CAfile", "root_cert/root_ca_cert.pem"])
        .args(["-untrusted", "root_cert/intermediate_ca_cert.pem"])
        .arg("backend_certs/dev-1_cert.pem")
        .output()
        .unwrap();
    assert!(text(&out).contains("certificate revoked"), "{}", text(&out));

    // No CA key anywhere but in the tokens: the CA folder holds no private
    // key (the identities' own keys are files, the broker's too: Mosquitto
    // reads it).
    assert!(pem_keys(&d.join("root_cert")).is_empty());
    assert!(!pem_keys(&d.join("backend_certs")).is_empty());
    assert!(hsm.tokens().exists());
}

#[test]
fn hostile_token_setups_are_classified_errors_and_write_nothing() {
    let hsm = Hsm::new();
    let d = hsm.work();
    let ca_files = || {
        d.join("root_cert/root_ca_cert.pem").exists() || d.join("root_cert/root_ca.key").exists()
    };

    // An attribute this does not know.
    let err = hsm.fails(
        &[
            "init-ca",
            "--key-uri",
            &uri("root", "k;colour=red"),
            "--pin-env",
            "ROOT_PIN",
        ],
        &[],
    );
    assert!(err.contains("unknown attribute \"colour\""), "{err}");
    assert!(!ca_files());

    // A wrong PIN: said so, the PIN shown nowhere, no key made.
    let err = hsm.fails(
        &[
            "init-ca",
            "--key-uri",
            &uri("root", "k"),
            "--pin-env",
            "ROOT_PIN",
        ],
        &[("ROOT_PIN", "9999")],
    );
    assert!(
        err.contains("wrong PIN") && err.contains("pkcs11:token=root;object=k"),
        "{err}"
    );
    assert!(!err.contains("9999"), "{err}");
    assert!(!ca_files());
    assert!(hsm.objects("root", ROOT_PIN).is_empty());

    // A PIN in the URI works, with a warning, and is recorded nowhere.
    let out = hsm.provision(
        &[
            "init-ca",
            "--key-uri",
            &format!("{}&pin-value={ROOT_PIN}", uri("root", "k")),
        ],
        &[("RUST_LOG", "warn")],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("pin-value") && all.contains("ps"), "{all}");
    let record = std::fs::read_to_string(d.join("root_cert/root_ca.key")).unwrap();
    assert!(
        !record.contains(ROOT_PIN) && !all.contains(ROOT_PIN),
        "{record}\n{all}"
    );
    // With its PIN given by variable later, the CA signs.
    let mut record_with_pin = record.trim_end().to_owned();
    record_with_pin.push_str("\npin-env=ROOT_PIN\n");
    std::fs::write(d.join("root_cert/root_ca.key"), &record_with_pin).unwrap();
    hsm.ok(&["issue", "client", "first"]);

    // The same name again, from another CA folder: refused, and the first
    // CA's key is untouched.
    let err = hsm.fails(
        &[
            "init-ca",
            "--ca-dir",
            "other",
            "--key-uri",
            &uri("root", "k"),
            "--pin-env",
            "ROOT_PIN",
        ],
        &[],
    );
    assert!(err.contains("already holds a key by this name"), "{err}");
    assert!(!d.join("other/root_ca_cert.pem").exists());
    hsm.ok(&["issue", "client", "second"]);

    // A key file naming a key the token does not have.
    std::fs::write(
        d.join("root_cert/root_ca.key"),
        record_with_pin.replace("object=k", "object=nope"),
    )
    .unwrap();
    let err = hsm.fails(&["issue", "client", "third"], &[]);
    assert!(
        err.contains("no such key") && err.contains("object=nope"),
        "{err}"
    );
    assert!(!d.join("backend_certs/third.key").exists());
    std::fs::write(d.join("root_cert/root_ca.key"), &record_with_pin).unwrap();

    // The token removed: a classified error, nothing written.
    hsm.delete_token("root");
    let err = hsm.fails(&["issue", "client", "fourth"], &[]);
    assert!(err.contains("no such token"), "{err}");
    assert!(!d.join("backend_certs/fourth.key").exists());
    let err = hsm.fails(&["crl"], &[]);
    assert!(err.contains("no such token"), "{err}");
}

#[test]
fn p384_rsa_and_ed25519_ca_keys_sign_in_the_token() {
    let hsm = Hsm::new();
    for key_type in ["p384", "rsa2048", "ed25519"] {
        let dir = format!("ca-{key_type}");
        hsm.ok(&[
            "init-ca",
            "--ca-dir",
            &dir,
            "--key-type",
            key_type,
            "--key-uri",
            &uri("root", &format!("key-{key_type}")),
            "--pin-env",
            "ROOT_PIN",
        ]);
        let out = format!("out-{key_type}");
        hsm.ok(&["issue", "client", "d1", "--ca-dir", &dir, "--out", &out]);
        let out = Command::new(peers::openssl())
            .current_dir(hsm.work())
            .args(["verify", "-CAfile", &format!("{dir}/root_ca_cert.pem")])
            .arg(format!("out-{key_type}/d1_cert.pem"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{key_type}: {}", text(&out));
    }
    let objects = hsm.objects("root", ROOT_PIN);
    assert_eq!(objects.len(), 6, "{objects:?}");
    assert!(
        objects.iter().all(|(_, _, guarded)| *guarded),
        "{objects:?}"
    );
}

/// Runs the README's first `sh` block after `heading` as printed, in an
/// empty folder with the binaries on PATH and no token settings of ours;
/// the folder and what it printed.
fn walk_through(heading: &str) -> (tempfile::TempDir, String) {
    let block = common::readme_block(heading).join("\n");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("walk-through.sh");
    std::fs::write(&script, format!("set -eu\n{block}")).unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_provision")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .arg(&script)
        .current_dir(dir.path())
        .env("PATH", path)
        .env_remove("SOFTHSM2_CONF")
        .env_remove("PKCS11_MODULE")
        .output()
        .unwrap();
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    (dir, all)
}

#[test]
fn the_readme_walk_through_runs_as_printed() {
    let (dir, all) = walk_through("### Keys in hardware");
    assert!(all.contains("backend_certs/client1_cert.pem: OK"), "{all}");
    assert!(all.contains("never extractable"), "{all}");
    // The record names the key exactly (its label and the id it was made
    // with) and the PIN's variable.
    let record = std::fs::read_to_string(dir.path().join("root_cert/intermediate_ca.key")).unwrap();
    assert!(
        record.starts_with("pkcs11:token=ca-online;object=intermediate;id=%")
            && record.ends_with("\npin-env=ONLINE_PIN\nmade-here\n")
            && all.contains(&record),
        "{record}\n{all}"
    );
    assert!(pem_keys(&dir.path().join("root_cert")).is_empty());
}

#[test]
fn an_intermediate_from_a_root_whose_record_is_offline() {
    // `init-ca --intermediate` with the root key `root_object` of the root
    // token, the new key in the intermediate token.
    let (root_uri, inter_uri) = (uri("root", ""), uri("inter", "inter-key"));
    let intermediate = |root_object: &str, extra: &[&'static str]| -> Vec<String> {
        let mut args: Vec<String> = ["init-ca", "--intermediate"].map(String::from).to_vec();
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        args.extend([
            "--root-key-uri".to_owned(),
            root_uri.replace("object=?", &format!("object={root_object}?")),
            "--root-pin-env".to_owned(),
            "ROOT_PIN".to_owned(),
            "--key-uri".to_owned(),
            inter_uri.clone(),
            "--pin-env".to_owned(),
            "INTER_PIN".to_owned(),
        ]);
        args
    };
    let hsm = Hsm::new();
    let d = hsm.work();
    hsm.ok(&[
        "init-ca",
        "--key-uri",
        &uri("root", "root-key"),
        "--pin-env",
        "ROOT_PIN",
    ]);
    // The root's record goes offline; the token stays plugged in.
    std::fs::remove_file(d.join("root_cert/root_ca.key")).unwrap();
    let err = hsm.fails(&["init-ca", "--intermediate"], &[]);
    assert!(err.contains("root_ca.key"), "{err}");
    // Another key of the token is not the root's: refused, nothing written.
    hsm.ok(&[
        "init-ca",
        "--ca-dir",
        "other",
        "--key-uri",
        &uri("root", "other-key"),
        "--pin-env",
        "ROOT_PIN",
    ]);
    let err = hsm.fails(&intermediate("other-key", &[]), &[]);
    assert!(err.contains("not the key of"), "{err}");
    assert!(!d.join("root_cert/intermediate_ca_cert.pem").exists());
    assert!(hsm.objects("inter", INTER_PIN).is_empty());
    // Refused after its key was made (a subject the root's): the new key
    // is removed from the token again.
    let err = hsm.fails(&intermediate("root-key", &["--cn", "MQTT Root CA"]), &[]);
    assert!(err.contains("is the root's"), "{err}");
    assert!(hsm.objects("inter", INTER_PIN).is_empty());
    hsm.ok(&intermediate("root-key", &[]));
    hsm.ok(&["issue", "client", "dev-1"]);
    let out = Command::new(peers::openssl())
        .current_dir(&d)
        .args(["verify", "-CAfile", "root_cert/root_ca_cert.pem"])
        .args(["-untrusted", "root_cert/intermediate_ca_cert.pem"])
        .arg("backend_certs/dev-1_cert.pem")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn serve_enrolls_devices_with_the_intermediate_in_a_token() {
    let hsm = Hsm::new();
    let d = hsm.work();
    hsm.ca_in_two_tokens();
    hsm.ok(&["issue", "server", "broker", "--dns", "localhost"]);
    // The service's own key in the intermediate's token too (one login
    // for both in `serve`): made there, its CSR signed for the role.
    hsm.token_key(
        ("ca-1", "backend_certs"),
        ("inter", "INTER_PIN", INTER_PIN),
        &[],
    );
    hsm.sign_client("ca-1", Some("ca-service"));
    assert!(
        pem_keys(&d.join("backend_certs"))
            .iter()
            .all(|p| !p.ends_with("ca-1.key"))
    );
    hsm.ok(&["issue", "claim", "factory", "--allow", "sensor-1"]);
    let (port, enroll_port) = (free_port(), free_port());
    hsm.ok(&[
        "broker-config",
        "--out",
        "broker",
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--enroll-port",
        &enroll_port.to_string(),
    ]);
    let _main = Mosquitto::with_config(&d.join("broker/mosquitto.conf"), port);
    let enroll = Mosquitto::with_config(&d.join("broker/enroll.conf"), enroll_port);
    // The service signs in the token (its PIN's variable from the record).
    let http = free_port();
    let start_serve = || {
        common::Serve::start(
            Command::new(env!("CARGO_BIN_EXE_provision"))
                .current_dir(&d)
                .env("SOFTHSM2_CONF", &hsm.conf)
                .env("INTER_PIN", INTER_PIN)
                .args(["serve", "-H", "localhost", "-p", &port.to_string()])
                .args(["--enroll-port", &enroll_port.to_string()])
                .args(["--listen", &format!("127.0.0.1:{http}")])
                .args(common::tls("ca-1"))
                .args(["--key-pin-env", "INTER_PIN"]),
            http,
        )
    };
    let serve = start_serve();
    let out = hsm.provision(
        &[
            "enroll",
            "sensor-1",
            "--cert",
            "backend_certs/factory_cert.pem",
            "--key",
            "backend_certs/factory.key",
            "--ca",
            "root_cert/root_ca_cert.pem",
            "-H",
            "localhost",
            "-p",
            &enroll_port.to_string(),
            "--out",
            "device",
            "--timeout",
            "20",
        ],
        &[],
    );
    serve.stop();
    assert!(out.status.success(), "{}", text(&out));
    // Started again, it reads the secret made the first time: the same
    // client id (and session) on the enrollment broker.
    start_serve().stop();
    let log = enroll.log();
    let ids: Vec<&str> = log
        .split(" as ca-1-")
        .skip(1)
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    assert!(
        ids.len() >= 2 && ids.iter().all(|id| *id == ids[0]),
        "{log}"
    );
    let out = Command::new(peers::openssl())
        .current_dir(&d)
        .args(["verify", "-CAfile", "root_cert/root_ca_cert.pem"])
        .args([
            "-untrusted",
            "device/sensor-1_cert.pem",
            "device/sensor-1_cert.pem",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

const DEVICE_PIN: &str = "2468";

/// The URI of token `token`, the module given, no object named.
fn token_uri(token: &str) -> String {
    format!("pkcs11:token={token}?module-path={}", module().display())
}

/// `mosquitto_sub` as `name` (its PEM files): every retained message under
/// `filter`, `topic payload` a line, up to `count` within 10 s.
fn retained(d: &Path, port: u16, name: &str, filter: &str, count: usize) -> Vec<String> {
    let out = Command::new(peers::mosquitto::mosquitto_client("mosquitto_sub"))
        .current_dir(d)
        .args(["-h", "localhost", "-p", &port.to_string(), "-t", filter])
        .args(["-v", "-W", "10", "-C", &count.to_string()])
        .args(["-i", name, "--cafile", "root_cert/root_ca_cert.pem"])
        .args(["--cert", &format!("backend_certs/{name}_cert.pem")])
        .args(["--key", &format!("backend_certs/{name}.key")])
        .output()
        .unwrap();
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

#[test]
fn device_keys_made_in_a_token_connect_and_publish_to_mosquitto() {
    let hsm = Hsm::new();
    hsm.tokens.init("devices", DEVICE_PIN);
    let d = hsm.work();
    let pin = [("DEVICE_PIN", DEVICE_PIN)];
    // A CA whose key is a file: only the devices' keys are in the token.
    hsm.ok(&["init-ca"]);
    let devices = [
        ("sensor-p256", "p256"),
        ("sensor-p384", "p384"),
        ("sensor-rsa", "rsa2048"),
        ("sensor-ed25519", "ed25519"),
    ];
    for (name, key_type) in devices {
        hsm.token_key(
            (name, "backend_certs"),
            ("devices", "DEVICE_PIN", DEVICE_PIN),
            &["--key-type", key_type],
        );
        // NAME.key records where the key is: the URI with the key's id, the
        // PIN's variable, and no key and no PIN.
        let record = std::fs::read_to_string(d.join(format!("backend_certs/{name}.key"))).unwrap();
        assert!(
            record.starts_with(&format!("pkcs11:token=devices;object={name};id=")),
            "{record}"
        );
        assert!(record.contains("\npin-env=DEVICE_PIN\n"), "{record}");
        assert!(
            !record.contains(DEVICE_PIN) && !record.contains("PRIVATE KEY"),
            "{record}"
        );
        // OpenSSL checks the CSR's signature, made in the token.
        let out = Command::new(peers::openssl())
            .current_dir(&d)
            .args(["req", "-verify", "-noout", "-in"])
            .arg(format!("backend_certs/{name}_csr.pem"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {}", text(&out));
        hsm.sign_client(name, None);
    }
    // The name is taken: a second key by it is refused, nothing changed.
    let taken = hsm.token_csr(
        ("sensor-p256", "elsewhere"),
        ("devices", "DEVICE_PIN", DEVICE_PIN),
        &[],
    );
    assert_eq!(taken.status.code(), Some(1), "{}", text(&taken));
    assert!(
        text(&taken).contains("already holds a key"),
        "{}",
        text(&taken)
    );
    assert!(!d.join("elsewhere/sensor-p256.key").exists());

    hsm.ok(&["issue", "client", "watcher", "--role", "service"]);
    let (broker, port) = hsm.broker();
    let publish = |key: &str, name: &str, topic: &str, extra: &[&str]| {
        let port = port.to_string();
        let cert = format!("backend_certs/{name}_cert.pem");
        let mut args = vec![
            "pub",
            "-p",
            &port,
            "-t",
            topic,
            "-m",
            name,
            "-q",
            "1",
            "--retain",
            "-i",
            name,
            "--cert",
            &cert,
            "--key",
            key,
            "--ca",
            "root_cert/root_ca_cert.pem",
        ];
        args.extend_from_slice(extra);
        let out = hsm.provision(&args, &pin);
        assert!(
            out.status.success(),
            "{name}: {}\n{}",
            text(&out),
            broker.log()
        );
    };
    for (name, _) in devices {
        let key = format!("backend_certs/{name}.key");
        publish(&key, name, &format!("devices/{name}/data"), &[]);
    }
    // The key named by its URI directly, the PIN's variable given.
    let direct = format!(
        "pkcs11:token=devices;object=sensor-p256?module-path={}",
        module().display()
    );
    publish(
        &direct,
        "sensor-p256",
        "devices/sensor-p256/status",
        &["--pin-env", "DEVICE_PIN"],
    );

    // An independent subscriber (Mosquitto's own client, a PEM identity)
    // reads what the broker kept from each token-signed connection.
    let seen = retained(&d, port, "watcher", "devices/#", 5);
    assert_eq!(
        seen,
        [
            "devices/sensor-ed25519/data sensor-ed25519",
            "devices/sensor-p256/data sensor-p256",
            "devices/sensor-p256/status sensor-p256",
            "devices/sensor-p384/data sensor-p384",
            "devices/sensor-rsa/data sensor-rsa",
        ],
        "{}",
        broker.log()
    );
    // Each connected as its certificate's CN (Mosquitto's
    // use_identity_as_username).
    for (name, _) in devices {
        assert!(
            broker.log().contains(&format!("u'{name}'")),
            "{}",
            broker.log()
        );
    }

    // The token holds the four keys, sensitive and never extractable; no
    // device key is a file anywhere (the broker's and the watcher's are).
    let objects = hsm.objects("devices", DEVICE_PIN);
    assert_eq!(objects.len(), 8, "{objects:?}");
    assert!(
        objects.iter().all(|(_, _, guarded)| *guarded),
        "{objects:?}"
    );
    let mut files: Vec<String> = pem_keys(&d)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        ["broker.key", "root_ca.key", "server.key", "watcher.key"],
        "{files:?}"
    );
}

#[test]
fn hostile_device_token_setups_are_classified_errors() {
    let hsm = Hsm::new();
    hsm.tokens.init("devices", DEVICE_PIN);
    let d = hsm.work();
    hsm.ok(&["init-ca"]);
    let csr = |name: &str, uri: &str, out: &str, pin: &str| {
        hsm.provision(
            &[
                "csr",
                name,
                "--out",
                out,
                "--key-uri",
                uri,
                "--pin-env",
                "DEVICE_PIN",
            ],
            &[("DEVICE_PIN", pin)],
        )
    };
    let failed = |out: Output| {
        let all = text(&out);
        assert_eq!(out.status.code(), Some(1), "{all}");
        assert!(
            !all.contains("panicked") && !all.contains(DEVICE_PIN),
            "{all}"
        );
        all
    };

    // An unknown attribute, a wrong PIN: refused before anything is made.
    let err = failed(csr(
        "dev-a",
        &token_uri("devices").replace("?", ";colour=red?"),
        "backend_certs",
        DEVICE_PIN,
    ));
    assert!(err.contains("unknown attribute \"colour\""), "{err}");
    let err = failed(csr("dev-a", &token_uri("devices"), "backend_certs", "0000"));
    assert!(
        err.contains("wrong PIN") && err.contains("pkcs11:token=devices"),
        "{err}"
    );
    assert!(!d.join("backend_certs/dev-a.key").exists());
    assert!(hsm.objects("devices", DEVICE_PIN).is_empty());

    // The files cannot be written (the folder is a file): the key made is
    // removed again.
    std::fs::write(d.join("not-a-folder"), "").unwrap();
    let err = failed(csr(
        "dev-a",
        &token_uri("devices"),
        "not-a-folder/sub",
        DEVICE_PIN,
    ));
    assert!(err.contains("not-a-folder"), "{err}");
    assert!(hsm.objects("devices", DEVICE_PIN).is_empty());

    // Two devices, properly made.
    for name in ["dev-a", "dev-b"] {
        let out = csr(name, &token_uri("devices"), "backend_certs", DEVICE_PIN);
        assert!(out.status.success(), "{}", text(&out));
        hsm.sign_client(name, None);
    }
    // Using them wrongly fails at loading, before any network traffic
    // (no broker here), naming the key and what is wrong.
    let pub_as = |key: &str, envs: &[(&str, &str)], extra: &[&str]| {
        let mut args = vec![
            "pub",
            "-p",
            "1",
            "-t",
            "devices/dev-a/data",
            "-m",
            "x",
            "--cert",
            "backend_certs/dev-a_cert.pem",
            "--key",
            key,
            "--ca",
            "root_cert/root_ca_cert.pem",
        ];
        args.extend_from_slice(extra);
        failed(hsm.provision(&args, envs))
    };
    let err = pub_as("backend_certs/dev-a.key", &[("DEVICE_PIN", "0000")], &[]);
    assert!(
        err.contains("backend_certs/dev-a.key") && err.contains("wrong PIN"),
        "{err}"
    );
    let err = pub_as("backend_certs/dev-a.key", &[], &[]);
    assert!(err.contains("$DEVICE_PIN is not set"), "{err}");
    let err = pub_as(
        &format!(
            "pkcs11:token=devices;object=nosuch?module-path={}",
            module().display()
        ),
        &[("DEVICE_PIN", DEVICE_PIN)],
        &["--pin-env", "DEVICE_PIN"],
    );
    assert!(
        err.contains("no such key") && err.contains("object=nosuch"),
        "{err}"
    );
    // dev-b's key with dev-a's certificate.
    let err = pub_as(
        "backend_certs/dev-b.key",
        &[("DEVICE_PIN", DEVICE_PIN)],
        &[],
    );
    assert!(err.contains("does not match"), "{err}");
    // The token gone.
    hsm.tokens.delete("devices");
    let err = pub_as(
        "backend_certs/dev-a.key",
        &[("DEVICE_PIN", DEVICE_PIN)],
        &[],
    );
    assert!(err.contains("no such token"), "{err}");
}

#[test]
fn the_readme_device_walk_through_runs_as_printed() {
    let (dir, all) = walk_through("### Keys in hardware: devices");
    assert!(all.contains("backend_certs/sensor-1_cert.pem: OK"), "{all}");
    let record = std::fs::read_to_string(dir.path().join("backend_certs/sensor-1.key")).unwrap();
    assert!(
        record.starts_with("pkcs11:token=devices;object=sensor-1;id=%")
            && record.ends_with("\npin-env=DEVICE_PIN\nmade-here\n")
            && all.contains(&record),
        "{record}\n{all}"
    );
    assert!(pem_keys(&dir.path().join("backend_certs")).is_empty());
}

/// Set for the child process of
/// [`a_token_removed_mid_connection_is_a_classified_error_until_it_is_back`]:
/// "FOLDER\nPORT\nTOKEN_DIR".
const TOKEN_GONE: &str = "MQTT_MTLS_TEST_TOKEN_GONE";

#[test]
fn a_token_removed_mid_connection_is_a_classified_error_until_it_is_back() {
    use std::io::{BufRead, Write};
    let hsm = Hsm::new();
    let devices = peers::softhsm::Tokens::new();
    devices.init("devices", DEVICE_PIN);
    let d = hsm.work();
    hsm.ok(&["init-ca"]);
    let out = Command::new(env!("CARGO_BIN_EXE_provision"))
        .current_dir(&d)
        .env("SOFTHSM2_CONF", &devices.conf)
        .env("DEVICE_PIN", DEVICE_PIN)
        .args(["csr", "sensor-g", "--out", "backend_certs"])
        .args([
            "--key-uri",
            &token_uri("devices"),
            "--pin-env",
            "DEVICE_PIN",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    hsm.sign_client("sensor-g", None);
    hsm.ok(&["issue", "client", "watcher", "--role", "service"]);
    let (mut broker, port) = hsm.broker();
    let watcher = |extra: &[&str]| {
        Command::new(peers::mosquitto::mosquitto_client("mosquitto_sub"))
            .current_dir(&d)
            .args(["-h", "localhost", "-p", &port.to_string()])
            .args(["-t", "devices/sensor-g/data", "-q", "1", "-v", "-c"])
            .args(["-i", "watcher", "--cafile", "root_cert/root_ca_cert.pem"])
            .args(["--cert", "backend_certs/watcher_cert.pem"])
            .args(["--key", "backend_certs/watcher.key"])
            .args(extra)
            .output()
            .unwrap()
    };
    assert!(watcher(&["-E"]).status.success());

    // The device, in a process of its own (SoftHSM2 reads SOFTHSM2_CONF
    // once per process), tells each step on its standard output.
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "token_gone_probe", "--nocapture"])
        .args(["--test-threads=1"])
        .env("SOFTHSM2_CONF", &devices.conf)
        .env("DEVICE_PIN", DEVICE_PIN)
        .env(
            TOKEN_GONE,
            format!("{}\n{port}\n{}", d.display(), devices.dir().display()),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    let mut wait_for = |step: &str, lines: &mut Vec<String>| loop {
        let mut line = String::new();
        assert!(
            said.read_line(&mut line).unwrap() > 0,
            "the device ended before {step}: {lines:?}"
        );
        lines.push(line.clone());
        if line.contains(step) {
            return line;
        }
    };
    // The token is gone: the broker restarts, so the device must sign a
    // full handshake again (no session ticket survives).
    wait_for("AWAY\t", &mut lines);
    let seen = |expected: &str, broker: &Mosquitto| {
        let got = watcher(&["-C", "1", "-W", "20"]);
        assert_eq!(
            String::from_utf8_lossy(&got.stdout),
            format!("devices/sensor-g/data {expected}\n"),
            "{}",
            broker.log()
        );
    };
    seen("before", &broker);
    broker.restart();
    let error = wait_for("ERROR\t", &mut lines);
    // The classified error names the token key, and what is wrong.
    assert!(
        error.contains("pkcs11:token=devices;object=sensor-g")
            && (error.contains("the key is not there") || error.contains("no such key")),
        "{error}"
    );
    // The restarted broker kept no session: the watcher subscribes again
    // before the token comes back.
    assert!(watcher(&["-E"]).status.success());
    writeln!(child.stdin.as_mut().unwrap(), "back").unwrap();
    wait_for("BACK\t", &mut lines);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{lines:?}{}", text(&out));
    seen("after", &broker);
}

/// Not a test of its own: the device of
/// [`a_token_removed_mid_connection_is_a_classified_error_until_it_is_back`]
/// in a child process. Does nothing unless [`TOKEN_GONE`] is set.
#[test]
fn token_gone_probe() {
    use mqtt_tls::{ClientCert, ConnectOptions, MqttClient, QoS};
    use std::time::{Duration, Instant};
    let Ok(args) = std::env::var(TOKEN_GONE) else {
        return;
    };
    let mut args = args.lines();
    let d = PathBuf::from(args.next().unwrap());
    let port: u16 = args.next().unwrap().parse().unwrap();
    let tokens = PathBuf::from(args.next().unwrap());
    let files = ClientCert::new(
        d.join("backend_certs/sensor-g_cert.pem"),
        d.join("backend_certs/sensor-g.key"),
        d.join("root_cert/root_ca_cert.pem"),
    );
    let token = std::fs::read_dir(&tokens)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let away = tokens.with_file_name("away");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut options = ConnectOptions::new("localhost", port, "sensor-g");
        options.clean_session = false;
        options.reconnect.initial = Duration::from_millis(100);
        options.reconnect.max = Duration::from_millis(500);
        let (client, mut connection) = MqttClient::new(&options, &files.load().unwrap()).unwrap();
        connection.connect().await.unwrap();
        let runner = tokio::spawn(connection.run());
        client
            .publish("devices/sensor-g/data", "before", QoS::AtLeastOnce, false)
            .await
            .unwrap();
        // The token goes (its files moved away, as SoftHSM2 sees a token
        // pulled out).
        std::fs::rename(&token, &away).unwrap();
        println!("AWAY\t");
        let deadline = Instant::now() + Duration::from_secs(30);
        let error = loop {
            if let Some(e) = client.last_error().filter(|e| e.contains("pkcs11:")) {
                break e;
            }
            assert!(Instant::now() < deadline, "{:?}", client.last_error());
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        println!("ERROR\t{}", error.replace('\n', " "));
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).unwrap();
        std::fs::rename(&away, &token).unwrap();
        tokio::time::timeout(
            Duration::from_secs(30),
            client.publish("devices/sensor-g/data", "after", QoS::AtLeastOnce, false),
        )
        .await
        .expect("reconnected once the token was back")
        .unwrap();
        println!("BACK\t");
        client.disconnect().await.unwrap();
        let _ = runner.await;
    });
}

/// Set for the child process of
/// [`a_second_key_on_a_logged_in_token_needs_the_same_pin`]: the folder.
const SAME_LOGIN: &str = "MQTT_MTLS_TEST_SAME_LOGIN";

#[test]
fn a_second_key_on_a_logged_in_token_needs_the_same_pin() {
    let hsm = Hsm::new();
    hsm.tokens.init("devices", DEVICE_PIN);
    let d = hsm.work();
    for name in ["dev-a", "dev-b"] {
        hsm.token_key((name, "keys"), ("devices", "DEVICE_PIN", DEVICE_PIN), &[]);
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "same_login_probe", "--nocapture"])
        .args(["--test-threads=1"])
        .env("SOFTHSM2_CONF", &hsm.conf)
        .env("DEVICE_PIN", DEVICE_PIN)
        .env("WRONG_PIN", "0000")
        .env(SAME_LOGIN, d.join("keys"))
        .output()
        .unwrap();
    let all = text(&out);
    assert!(out.status.success() && all.contains("CHECKED\t"), "{all}");
}

/// Not a test of its own: in a child process, one key opened (the token
/// logged in), then a second key of the same token named with a wrong PIN,
/// an unset one, and the right one. Does nothing unless [`SAME_LOGIN`] is
/// set.
#[test]
fn same_login_probe() {
    use provision::pkcs11::{TokenKeySpec, open};
    let Ok(dir) = std::env::var(SAME_LOGIN) else {
        return;
    };
    let record = |name: &str, pin_env: &str| {
        let text = std::fs::read_to_string(Path::new(&dir).join(format!("{name}.key"))).unwrap();
        TokenKeySpec::from_record(&text, Some(pin_env))
            .unwrap()
            .unwrap()
    };
    // Held: the token stays logged in.
    let _first = open(&record("dev-a", "DEVICE_PIN")).unwrap();
    let err = open(&record("dev-b", "WRONG_PIN")).unwrap_err().to_string();
    assert!(err.contains("wrong PIN") && !err.contains("0000"), "{err}");
    let err = open(&record("dev-b", "NO_SUCH_PIN_VARIABLE"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not set"), "{err}");
    open(&record("dev-b", "DEVICE_PIN")).unwrap();
    println!("CHECKED\t");
}

/// What `openssl s_server` (TLS `version`, asking for a client certificate
/// signed with `sigalgs`) saw of `provision pub` with the token key of
/// `name`: the handshake's details and the first bytes after it.
fn s_server_saw(hsm: &Hsm, name: &str, version: &str, sigalgs: &str) -> String {
    let d = hsm.work();
    let port = free_port();
    let log = d.join(format!("s_server-{name}-{version}-{sigalgs}.log"));
    // Both outputs in one log (the verification is told on standard
    // error), unbuffered (stdbuf): what it saw is there as it sees it.
    let out = std::fs::File::create(&log).unwrap();
    let err = out.try_clone().unwrap();
    // Unbuffered (stdbuf): what it saw is in the log as it sees it.
    let mut server = Command::new("stdbuf")
        .current_dir(&d)
        .arg("-o0")
        .arg(peers::openssl())
        .args(["s_server", "-accept", &port.to_string(), version])
        .args(["-cert", "backend_certs/broker_cert.pem"])
        .args(["-key", "backend_certs/broker.key"])
        .args(["-CAfile", "root_cert/root_ca_cert.pem", "-Verify", "1"])
        .args(["-client_sigalgs", sigalgs, "-naccept", "1"])
        .stdin(std::process::Stdio::piped())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // Listening once it says so (a probing connection would be its one).
    while !std::fs::read(&log).is_ok_and(|b| String::from_utf8_lossy(&b).contains("ACCEPT")) {
        assert!(
            std::time::Instant::now() < deadline,
            "s_server did not listen"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // No broker answers the CONNECT: what matters is what the server saw
    // until it came (or 10 s passed); then both go.
    let mut client = Command::new(env!("CARGO_BIN_EXE_provision"))
        .current_dir(&d)
        .env("SOFTHSM2_CONF", &hsm.conf)
        .env("DEVICE_PIN", DEVICE_PIN)
        .args(["pub", "-p", &port.to_string()])
        .args(["-t", &format!("devices/{name}/x"), "-m", "x"])
        .args(["--cert", &format!("backend_certs/{name}_cert.pem")])
        .args(["--key", &format!("backend_certs/{name}.key")])
        .args(["--ca", "root_cert/root_ca_cert.pem"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !std::fs::read(&log).is_ok_and(|b| String::from_utf8_lossy(&b).contains("MQTT\u{4}"))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = client.kill();
    let _ = client.wait();
    let _ = server.kill();
    let _ = server.wait();
    String::from_utf8_lossy(&std::fs::read(&log).unwrap()).into_owned()
}

#[test]
fn a_token_key_signs_the_scheme_each_tls_version_and_peer_asks_for() {
    let hsm = Hsm::new();
    hsm.tokens.init("devices", DEVICE_PIN);
    hsm.ok(&["init-ca"]);
    for (name, key_type) in [("dev-rsa", "rsa2048"), ("dev-ec", "p256")] {
        hsm.token_key(
            (name, "backend_certs"),
            ("devices", "DEVICE_PIN", DEVICE_PIN),
            &["--key-type", key_type],
        );
        hsm.sign_client(name, None);
    }
    hsm.ok(&["issue", "server", "broker", "--dns", "localhost"]);
    // (key, TLS version, what the server asks for, what it must see)
    let cases = [
        (
            "dev-rsa",
            "-tls1_2",
            "RSA+SHA256",
            "Peer signature type: RSA\n",
        ),
        (
            "dev-rsa",
            "-tls1_2",
            "RSA-PSS+SHA256:RSA+SHA256",
            "Peer signature type: RSA-PSS\n",
        ),
        (
            "dev-rsa",
            "-tls1_3",
            "RSA-PSS+SHA256:RSA+SHA256",
            "Peer signature type: RSA-PSS\n",
        ),
        (
            "dev-ec",
            "-tls1_2",
            "ECDSA+SHA256",
            "Peer signature type: ECDSA\n",
        ),
        (
            "dev-ec",
            "-tls1_3",
            "ECDSA+SHA256",
            "Peer signature type: ECDSA\n",
        ),
    ];
    for (name, version, sigalgs, expected) in cases {
        let saw = s_server_saw(&hsm, name, version, sigalgs);
        let case = format!("{name} {version} {sigalgs}");
        // The client certificate verified, signed as asked, and the MQTT
        // CONNECT came through the finished handshake.
        assert!(
            saw.contains(&format!("depth=0 CN = {name}\nverify return:1")),
            "{case}: {saw}"
        );
        assert!(saw.contains(expected), "{case}: {saw}");
        assert!(saw.contains("MQTT"), "{case}: {saw}");
    }
}

#[test]
fn the_ingest_stores_messages_with_its_key_named_by_a_uri_in_its_tls_table() {
    const SERVICE_PIN: &str = "1357";
    let hsm = Hsm::new();
    hsm.tokens.init("services", SERVICE_PIN);
    let d = hsm.work();
    hsm.ok(&["init-ca"]);
    hsm.token_key(
        ("ingest", "backend_certs"),
        ("services", "SERVICE_PIN", SERVICE_PIN),
        &[],
    );
    hsm.sign_client("ingest", Some("service"));
    hsm.ok(&["issue", "client", "dev-1"]);
    let (_broker, port) = hsm.broker();
    // The [tls] table names the key by its URI (no key file), the PIN by
    // its variable.
    let config = d.join("ingest.toml");
    std::fs::write(
        &config,
        format!(
            "db = \"sqlite://{db}\"\nlisten = \"127.0.0.1:0\"\n\
             [tls]\ncert_path = \"backend_certs/ingest_cert.pem\"\n\
             key_path = \"pkcs11:token=services;object=ingest?module-path={module}\"\n\
             ca_cert_path = \"root_cert/root_ca_cert.pem\"\npin_env = \"SERVICE_PIN\"\n\
             [mqtt]\nhost = \"localhost\"\nport = {port}\nclient_id = \"ingest\"\n\
             topics = [\"devices/#\"]\n",
            db = d.join("ingest.db").display(),
            module = module().display(),
        ),
    )
    .unwrap();
    let ingest_bin = Path::new(env!("CARGO_BIN_EXE_provision")).with_file_name("mqtt-ingest");
    let ingest = peers::ingest::Ingest::spawn(
        Command::new(&ingest_bin)
            .current_dir(&d)
            .arg("--config")
            .arg(&config)
            .env("SOFTHSM2_CONF", &hsm.conf)
            .env("SERVICE_PIN", SERVICE_PIN)
            .env("RUST_LOG", "info"),
    );
    ingest.wait_healthy();
    // A device's QoS 1 messages, retained on topics of their own: the
    // ingest has each whether it subscribed before or after.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    for i in 0..3 {
        let message = format!("reading-{i}");
        let out = hsm.provision(
            &[
                "pub",
                "-p",
                &port.to_string(),
                "-t",
                &format!("devices/dev-1/data-{i}"),
                "-m",
                &message,
                "--retain",
                "-i",
                "dev-1",
                "--cert",
                "backend_certs/dev-1_cert.pem",
                "--key",
                "backend_certs/dev-1.key",
                "--ca",
                "root_cert/root_ca_cert.pem",
            ],
            &[],
        );
        assert!(out.status.success(), "{}", text(&out));
    }
    loop {
        let (_, body) = ingest.get("/api/messages?limit=10");
        if (0..3).all(|i| body.contains(&format!("reading-{i}"))) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{body}\n{}",
            ingest.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(!ingest.log().contains(SERVICE_PIN), "{}", ingest.log());
}
