//! `mqtt-bench hsm PROVISION MODULE COUNT`: the CA key in a PKCS#11 token
//! (SoftHSM2) against a PEM key, side by side: `provision fleet` issuing
//! COUNT P-256 identities (a process, to its exit), and `provision crl`
//! (median of 5), each with a fresh CA of either kind; three rounds taking
//! turns, medians. Then a device's key: mTLS handshakes per second (connect,
//! CONNACK, DISCONNECT, one after another, each a full handshake) with the
//! P-256 key in a PEM file, in SoftHSM2 and in a software TPM behind
//! tpm2-pkcs11, each measured in a process of its own
//! (`mqtt-bench handshakes`).

use std::path::Path;
use std::process::Command;

use anyhow::Context;

use crate::results::{HandshakeRate, Handshakes, Hsm, median};

const PIN: &str = "1234";

/// Runs of each kind, taking turns; medians.
const ROUNDS: usize = 3;

pub(crate) fn run(provision: &Path, module: &Path, count: usize) -> anyhow::Result<Hsm> {
    // Run from other folders: an absolute path.
    let provision = &std::fs::canonicalize(provision)
        .with_context(|| format!("finding {}", provision.display()))?;
    // The bench's own token (peers' harness: it panics, as a step may,
    // with what is missing).
    let tokens = peers::softhsm::Tokens::new();
    tokens.init("bench", PIN);
    let conf = tokens.conf.clone();
    let dir = tokens.scratch();
    let run = |folder: &Path, args: &[&str]| -> anyhow::Result<f64> {
        crate::fleet::timed(
            Command::new(provision)
                .current_dir(folder)
                .env("SOFTHSM2_CONF", &conf)
                .env("BENCH_PIN", PIN)
                .args(args),
        )
    };
    let manifest = crate::fleet::manifest(count);
    // A fresh CA folder for each run; none deleted until the end (see
    // `identities::compare` on ext4); the two kinds take turns.
    let mut runs = 0;
    let mut measure = |init: &[&str]| -> anyhow::Result<(f64, f64)> {
        runs += 1;
        let folder = dir.join(format!("run-{runs}"));
        std::fs::create_dir(&folder)?;
        std::fs::write(folder.join("fleet.toml"), &manifest)?;
        run(&folder, init)?;
        let _ = Command::new("sync").status();
        let fleet = run(&folder, &["fleet", "fleet.toml"])?;
        let crl = median(
            (0..5)
                .map(|_| run(&folder, &["crl"]).map(|s| s * 1e3))
                .collect::<anyhow::Result<_>>()?,
        );
        Ok((count as f64 / fleet, crl))
    };
    let (mut pem, mut token) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let object = format!("ca-{round}");
        let uri = format!(
            "pkcs11:token=bench;object={object}?module-path={}",
            module.display()
        );
        token.push(measure(&[
            "init-ca",
            "--key-uri",
            &uri,
            "--pin-env",
            "BENCH_PIN",
        ])?);
        pem.push(measure(&["init-ca"])?);
    }
    let part = |runs: &[(f64, f64)], which: fn(&(f64, f64)) -> f64| {
        median(runs.iter().map(which).collect())
    };
    let (pem_per_second, pem_crl_ms) = (part(&pem, |r| r.0), part(&pem, |r| r.1));
    let (token_per_second, token_crl_ms) = (part(&token, |r| r.0), part(&token, |r| r.1));
    let handshakes = handshakes(provision, &conf, dir)?;
    Ok(Hsm {
        identities: count,
        pem_per_second,
        token_per_second,
        pem_crl_ms,
        token_crl_ms,
        handshakes: Some(handshakes),
    })
}

/// Handshakes measured for each kind of device key.
const HANDSHAKES: usize = 200;

/// The device-key comparison (see the module's description): the broker and
/// the CA here, each key made by `provision csr` (`--key-uri` for the
/// tokens) and its CSR signed by the CA.
fn handshakes(provision: &Path, softhsm_conf: &Path, dir: &Path) -> anyhow::Result<Handshakes> {
    use peers::mosquitto::{BrokerOptions, Mosquitto, Pki};
    use pki_core::{Csr, IssueParams, Profile, Validity};
    let pki = Pki::new();
    let broker = Mosquitto::start(&pki, &BrokerOptions::default());
    let tpm = peers::tpm::SoftTpm::start("bench", PIN);
    let keys = dir.join("device-keys");
    std::fs::create_dir_all(&keys)?;
    // A device's files: NAME.key from `provision csr` (with `extra`), its
    // certificate from the CA.
    let device = |name: &str, envs: &[(String, String)], extra: &[&str]| -> anyhow::Result<()> {
        let out = Command::new(provision)
            .current_dir(&keys)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .env("BENCH_PIN", PIN)
            .args(["csr", name, "--out", "."])
            .args(extra)
            .output()?;
        tpm.after_process();
        anyhow::ensure!(
            out.status.success(),
            "provision csr {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let csr = Csr::from_pem(&std::fs::read_to_string(
            keys.join(format!("{name}_csr.pem")),
        )?)?;
        let issued = pki.ca.sign(
            &csr,
            &IssueParams::new(Profile::Client, Validity::days_from_now(1)?),
        )?;
        std::fs::write(
            keys.join(format!("{name}_cert.pem")),
            issued.certificate.to_pem(),
        )?;
        Ok(())
    };
    let softhsm_env = vec![(
        "SOFTHSM2_CONF".to_owned(),
        softhsm_conf.display().to_string(),
    )];
    let uri = |module: &Path| format!("pkcs11:token=bench?module-path={}", module.display());
    device("pem", &[], &[])?;
    device(
        "softhsm",
        &softhsm_env,
        &[
            "--key-uri",
            &uri(&peers::softhsm::module()),
            "--pin-env",
            "BENCH_PIN",
        ],
    )?;
    device(
        "tpm",
        &tpm.envs(),
        &[
            "--key-uri",
            &uri(&peers::tpm::module()),
            "--pin-env",
            "BENCH_PIN",
        ],
    )?;
    let measure = |name: &str, envs: &[(String, String)]| -> anyhow::Result<f64> {
        let me = std::env::current_exe()?;
        let out = Command::new(me)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .env("BENCH_PIN", PIN)
            .arg("handshakes")
            .arg(broker.port.to_string())
            .arg(keys.join(format!("{name}_cert.pem")))
            .arg(keys.join(format!("{name}.key")))
            .arg(&pki.ca_path)
            .arg(HANDSHAKES.to_string())
            .output()?;
        tpm.after_process();
        anyhow::ensure!(
            out.status.success(),
            "mqtt-bench handshakes ({name}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rate: HandshakeRate = serde_json::from_slice(&out.stdout)?;
        Ok(rate.per_second)
    };
    // Three rounds taking turns; medians.
    let (mut pem, mut softhsm, mut tpm_rates) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        pem.push(measure("pem", &[])?);
        softhsm.push(measure("softhsm", &softhsm_env)?);
        tpm_rates.push(measure("tpm", &tpm.envs())?);
    }
    Ok(Handshakes {
        count: HANDSHAKES,
        pem_per_second: median(pem),
        softhsm_per_second: median(softhsm),
        tpm_per_second: median(tpm_rates),
    })
}

/// `mqtt-bench handshakes PORT CERT KEY CA COUNT`: COUNT connections one
/// after another (connect, CONNACK, DISCONNECT), each with a new TLS
/// configuration (a full handshake, no resumption), with the key at KEY (a
/// PEM file or a token's record).
pub(crate) fn measure_handshakes(
    port: u16,
    files: mqtt_tls::ClientCert,
    count: usize,
) -> anyhow::Result<HandshakeRate> {
    let runtime = tokio::runtime::Runtime::new()?;
    let identity = files.load()?;
    let per_second = runtime.block_on(crate::connects::one_after_another(
        port, &identity, "hs", count,
    ))?;
    Ok(HandshakeRate { per_second })
}
