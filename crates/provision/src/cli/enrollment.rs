//! The lifecycle commands: `issue claim`, `serve`, `enroll`, `renew`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use mqtt_tls::ConnectOptions;
use mqtt_tls::lifecycle::{Enrollment, RenewOptions, Renewer};
use pki_core::Profile;
use provision::enrollment::{Policy, claim_policy};
use provision::files::Name;
use provision::inventory::Inventory;
use provision::layout::IdentityPaths;
use provision::ops::{CsrRequest, IssueRequest, issue, when};
use provision::roles::Role;
use provision::serve::{Broker, ServeOptions};
use serde::Serialize;

use super::args::{ClaimArgs, EnrollArgs, RenewArgs, ServeArgs};

/// `issue claim`.
#[derive(Serialize)]
pub(crate) struct ClaimIssued {
    name: String,
    #[serde(flatten)]
    paths: IdentityPaths,
    serial: String,
    until: String,
    names: Vec<String>,
    pattern: Option<String>,
    quota: Option<u64>,
}

impl fmt::Display for ClaimIssued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "issued claim certificate {}", self.name)?;
        writeln!(f, "  key:         {} (0600)", self.paths.key.display())?;
        writeln!(f, "  certificate: {}", self.paths.cert.display())?;
        writeln!(f, "  serial:      {}", self.serial)?;
        writeln!(f, "  until:       {}", self.until)?;
        let mut may = Vec::new();
        if !self.names.is_empty() {
            may.push(format!("{} listed name(s)", self.names.len()));
        }
        if let Some(p) = &self.pattern {
            may.push(format!("names matching {p:?}"));
        }
        writeln!(f, "  may enroll:  {}", may.join(" and "))?;
        if let Some(q) = self.quota {
            writeln!(f, "  quota:       {q} device(s)")?;
        }
        writeln!(
            f,
            "next: copy the claim's key and certificate and the CA certificate onto the \
             devices; each runs\n  provision enroll NAME --cert {} --key {} --ca CA.pem --port 8884",
            self.paths.cert.display(),
            self.paths.key.display()
        )
    }
}

pub(crate) fn issue_claim(args: ClaimArgs) -> anyhow::Result<ClaimIssued> {
    let mut names = args.allow;
    if let Some(file) = &args.allow_file {
        let text = provision::files::read_text(file)?;
        names.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned),
        );
    }
    // Checked before anything is written.
    let policy = claim_policy(
        names,
        args.allow_pattern,
        args.quota,
        std::time::SystemTime::now(),
    )
    .with_context(|| format!("the policy of claim {:?}", args.name))?;
    let (dir, ca) = args.ca.load()?;
    let inventory = Inventory::open(&dir)?;
    let mut locked = inventory.lock(&ca)?;
    let issued = issue(
        &mut locked,
        &IssueRequest {
            identity: CsrRequest {
                name: Name::new(args.name.clone())?,
                subject: args.subject.options(),
                key_type: args.key_type,
                dns: Vec::new(),
                ip: Vec::new(),
                out: args.out,
                force: args.force,
                token: None,
            },
            profile: Profile::Client,
            days: args.days,
            role: Role::Claim,
        },
    )?;
    let policy = provision::inventory::ClaimPolicy {
        until: pki_core::Timestamp(issued.certificate.not_after()),
        ..policy
    };
    locked.set_claim_policy(&args.name, &policy)?;
    provision::broker::apply(&inventory, &locked.commit()?)?;
    Ok(ClaimIssued {
        name: args.name,
        paths: issued.paths,
        serial: issued.certificate.serial().to_string(),
        until: when(issued.certificate.not_after()),
        names: policy.names,
        pattern: policy.pattern,
        quota: policy.quota,
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// `serve`: runs until SIGINT or SIGTERM.
pub(crate) fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let (ca_dir, ca) = args.authority.load()?;
    let identity = mqtt_tls::ClientCert {
        passphrase_env: args.key_passphrase_env.clone(),
        pin_env: args.key_pin_env.clone(),
        ..mqtt_tls::ClientCert::new(&args.cert, &args.key, &args.ca)
    }
    .load()?;
    let enroll_broker = args.enroll_port.map(|port| Broker {
        host: args
            .enroll_host
            .clone()
            .unwrap_or_else(|| args.host.clone()),
        port,
    });
    let options = ServeOptions {
        ca_dir,
        ca,
        identity,
        broker: Broker {
            host: args.host,
            port: args.port,
        },
        enroll_broker,
        share_group: args.share_group,
        policy: Policy { days: args.days },
        grace: args.grace,
        http: args.listen,
        shutdown_timeout: std::time::Duration::from_secs(args.shutdown_timeout),
    };
    runtime()?.block_on(async {
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async {
                    match term.as_mut() {
                        Some(t) => { t.recv().await; }
                        None => std::future::pending::<()>().await,
                    }
                } => {}
            }
        };
        provision::serve::serve(options, shutdown).await
    })?;
    Ok(())
}

/// `enroll`.
#[derive(Serialize)]
pub(crate) struct Enrolled {
    name: String,
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    serial: String,
    not_after: String,
}

impl fmt::Display for Enrolled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "enrolled {} (serial {})", self.name, self.serial)?;
        writeln!(f, "  key:         {} (0600, made here)", self.key.display())?;
        writeln!(f, "  certificate: {}", self.cert.display())?;
        writeln!(f, "  valid until: {}", self.not_after)?;
        writeln!(
            f,
            "next: connect to the main broker with it; `provision renew` (or mqtt-tls's \
             Renewer) renews it before it ends"
        )
    }
}

pub(crate) fn enroll(args: EnrollArgs) -> anyhow::Result<Enrolled> {
    // The name becomes file names here: checked before anything else.
    Name::new(args.name.as_str())?;
    let files = args.claim.files()?;
    let claim = files.load().context("the claim identity")?;
    let mut request = Enrollment::new(
        ConnectOptions::new(&args.host, args.port, "enroll"),
        &args.name,
        &args.out,
        &files.ca_cert_path,
    );
    request.key_type = args.key_type;
    request.timeout = Duration::from_secs(args.timeout);
    request.force = args.force;
    request.token = super::commands::new_key_spec(
        args.key_uri.as_deref(),
        &args.name,
        args.key_pin_env.as_deref(),
    )?;
    let new = match runtime()?.block_on(mqtt_tls::lifecycle::enroll(&claim, &request)) {
        Ok(new) => new,
        Err(mqtt_tls::Error::WouldReplace { path }) => anyhow::bail!(
            "{} exists; pass --force to replace it (nothing was sent)",
            path.display()
        ),
        Err(e) => return Err(e.into()),
    };
    let cert = new.load()?.certificate().clone();
    Ok(Enrolled {
        name: args.name,
        serial: cert.serial().to_string(),
        not_after: when(cert.not_after()),
        cert: new.cert_path,
        key: new.key_path,
        ca: new.ca_cert_path,
    })
}

/// `renew`.
#[derive(Serialize)]
pub(crate) struct Renewed {
    previous: String,
    serial: String,
    not_after: String,
    cert: PathBuf,
    key: PathBuf,
}

impl fmt::Display for Renewed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "renewed: serial {} replaces {}",
            self.serial, self.previous
        )?;
        writeln!(f, "  key:         {} (0600, new)", self.key.display())?;
        writeln!(f, "  certificate: {}", self.cert.display())?;
        writeln!(f, "  valid until: {}", self.not_after)
    }
}

pub(crate) fn renew(args: RenewArgs) -> anyhow::Result<Renewed> {
    let files = args.identity.files()?;
    mqtt_tls::lifecycle::settle(&files)?;
    let identity = files.load()?;
    let name = identity
        .certificate()
        .common_name()
        .context("the certificate has no CN")?;
    let renewed = runtime()?.block_on(async {
        let (client, mut connection) = mqtt_tls::MqttClient::new(
            &ConnectOptions::new(&args.host, args.port, &name),
            &identity,
        )?;
        connection.connect().await?;
        let runner = tokio::spawn(connection.run());
        let result = async {
            let renewer = Renewer::new(
                client.clone(),
                files.clone(),
                RenewOptions {
                    timeout: Duration::from_secs(args.timeout),
                    ..RenewOptions::default()
                },
            )?;
            renewer.renew_now().await
        }
        .await;
        let _ = client.disconnect().await;
        let _ = runner.await;
        result
    })?;
    Ok(Renewed {
        previous: renewed.previous,
        serial: renewed.serial,
        not_after: when(renewed.not_after),
        cert: files.cert_path,
        key: files.key_path,
    })
}
