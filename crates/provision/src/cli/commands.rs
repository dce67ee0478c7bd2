//! One function per command: arguments in, a typed outcome
//! ([`super::outcomes`]) out. Orchestration only: the library does the
//! work, the outcome the printing.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use pki_core::{Profile, Serial, SubjectAltName};
use provision::files::Name;
use provision::inventory::{Committed, Filter, Inventory, Record, Status};
use provision::layout::{self};
use provision::ops::{
    self, CsrRequest, InitCa, InitIntermediate, IssueRequest, RevokeTarget, SignRequest,
    init_ca_archiving, make_csr, sign_csr, write_crl,
};

use super::args::{
    AuditArgs, BrokerConfigArgs, CrlArgs, CsrArgs, FleetArgs, InitCaArgs, InspectArgs, IssueArgs,
    ListArgs, NameArgs, PubArgs, RevokeArgs, SignArgs, SubArgs, SubjectArgs, VerifyArgs,
    new_passphrase, passphrase,
};
use super::outcomes::{
    Audited, BrokerWritten, Brokers, CaCreated, CrlWritten, CsrMade, FleetDone, FleetIdentity,
    FleetPlanned, IntermediateCreated, Issued, Message, Published, RefusedName, Revoked,
    RevokedCert, Signed, Verified, serials, when,
};

/// Takes a committed change to the brokers ([`provision::broker::apply`]).
fn apply(inventory: &Inventory, committed: &Committed) -> anyhow::Result<Brokers> {
    Ok(Brokers(provision::broker::apply(inventory, committed)?))
}

pub(crate) fn init_ca(args: InitCaArgs) -> anyhow::Result<CaCreated> {
    let token = token_key(&args)?;
    let ca_dir = provision::ca_folder::CaDir::new(&args.ca_dir)
        .with_inventory_url(args.inventory.url)
        .with_insecure_db(args.inventory.insecure_db);
    let passphrase = if args.encrypt {
        Some(new_passphrase(&ca_dir.key_path())?)
    } else {
        passphrase(args.passphrase_env.as_deref())?
    };
    let encrypted = passphrase.is_some();
    // A PostgreSQL inventory must answer before the CA is written.
    if let Some(url) = ca_dir.inventory_url() {
        Inventory::probe(url, ca_dir.db_transport())?;
    }
    let (ca, archived) = init_ca_archiving(
        &ca_dir,
        &InitCa {
            subject: args.subject.options(),
            key_type: args.key_type,
            days: args.days,
            passphrase,
            token,
            force: args.force,
        },
    )?;
    // The inventory's schema made and checked, and the database claimed
    // for this CA, now: a CA whose inventory cannot be opened is not made.
    if ca_dir.inventory_url().is_some()
        && let Err(e) = Inventory::open(&ca_dir)
    {
        if archived.is_none() {
            for path in [ca_dir.cert_path(), ca_dir.key_path()] {
                let _ = std::fs::remove_file(path);
            }
        }
        return Err(e.into());
    }
    Ok(CaCreated {
        subject: ca.certificate().subject(),
        cert: ca_dir.cert_path(),
        key: ca_dir.key_path(),
        encrypted,
        key_in_token: ca.key().external_location(),
        not_after: when(ca.certificate().not_after()),
        archived,
    })
}

/// `--key-uri` and `--pin-env`: the token the new key goes into.
fn token_key(args: &InitCaArgs) -> anyhow::Result<Option<provision::pkcs11::TokenKeySpec>> {
    spec_of(args.key_uri.as_deref(), args.pin_env.as_deref())
}

/// Where `--key-uri` says a new key for `name` goes (labelled `name`
/// unless the URI says `object=`), its PIN in `pin_env`.
pub(crate) fn new_key_spec(
    uri: Option<&str>,
    name: &str,
    pin_env: Option<&str>,
) -> anyhow::Result<Option<provision::pkcs11::TokenKeySpec>> {
    uri.map(|uri| {
        Ok(provision::pkcs11::TokenKeySpec::new(
            provision::pkcs11::KeyUri::for_new_key(uri, name)?,
            pin_env.map(str::to_owned),
        ))
    })
    .transpose()
}

/// A token key from a `--key-uri` and its `--pin-env`.
pub(crate) fn spec_of(
    uri: Option<&str>,
    pin_env: Option<&str>,
) -> anyhow::Result<Option<provision::pkcs11::TokenKeySpec>> {
    uri.map(|uri| {
        Ok(provision::pkcs11::TokenKeySpec::new(
            uri.parse()?,
            pin_env.map(str::to_owned),
        ))
    })
    .transpose()
}

pub(crate) fn init_intermediate(args: InitCaArgs) -> anyhow::Result<IntermediateCreated> {
    let token = token_key(&args)?;
    let root_token = spec_of(args.root_key_uri.as_deref(), args.root_pin_env.as_deref())?;
    let ca_dir = provision::ca_folder::CaDir::new(&args.ca_dir)
        .with_inventory_url(args.inventory.url)
        .with_insecure_db(args.inventory.insecure_db);
    let root_passphrase = passphrase(args.root_passphrase_env.as_deref())?;
    let new_key_passphrase = if args.encrypt {
        Some(new_passphrase(&ca_dir.intermediate_key_path())?)
    } else {
        passphrase(args.passphrase_env.as_deref())?
    };
    let encrypted = new_key_passphrase.is_some();
    let mut request = InitIntermediate {
        subject: args.subject.options(),
        key_type: args.key_type,
        days: args.days,
        root_passphrase,
        passphrase: new_key_passphrase,
        token,
        root_token,
        force: args.force,
    };
    // An encrypted root key without --root-passphrase-env is asked for at
    // a terminal (nothing is written before the root key is read).
    let made = match ops::init_intermediate(&ca_dir, &request) {
        Err(provision::Error::Passphrase { path, .. })
            if path == ca_dir.key_path()
                && args.root_passphrase_env.is_none()
                && std::io::stdin().is_terminal() =>
        {
            let typed = zeroize::Zeroizing::new(
                rpassword::prompt_password(format!("passphrase for {}: ", path.display()))
                    .with_context(|| format!("reading the passphrase for {}", path.display()))?,
            );
            request.root_passphrase = Some(zeroize::Zeroizing::new(typed.as_bytes().to_vec()));
            ops::init_intermediate(&ca_dir, &request)?
        }
        other => other?,
    };
    let inventory = Inventory::open(&ca_dir)?;
    Ok(IntermediateCreated {
        brokers: apply(&inventory, &made.committed)?,
        subject: made.ca.certificate().subject(),
        issuer: made.root.subject(),
        cert: ca_dir.intermediate_cert_path(),
        key: ca_dir.intermediate_key_path(),
        encrypted,
        key_in_token: made.ca.key().external_location(),
        not_after: when(made.ca.certificate().not_after()),
        capped_from: made.capped_not_after.map(when),
        archived: made.archived,
        crl: ca_dir.crl_path(),
        ca_cert: ca_dir.cert_path(),
        root_key: ca_dir.key_path(),
        earlier_clients: made.earlier_clients,
    })
}

pub(crate) fn issue(profile: Profile, args: IssueArgs) -> anyhow::Result<Issued> {
    let (dir, ca) = args.ca.load()?;
    let inventory = Inventory::open(&dir)?;
    let mut locked = inventory.lock(&ca)?;
    let issued = ops::issue(
        &mut locked,
        &IssueRequest {
            identity: csr_request(
                args.name,
                &args.subject,
                args.key_type,
                args.names,
                args.out,
                args.force,
            )?,
            profile,
            days: args.days,
            role: args.role,
        },
    )?;
    let brokers = apply(&inventory, &locked.commit()?)?;
    Ok(Issued {
        brokers,
        profile: profile.as_str(),
        subject: issued.certificate.subject(),
        serial: issued.certificate.serial().to_string(),
        not_after: when(issued.certificate.not_after()),
        superseded: serials(&issued.superseded),
        capped_from: issued.capped_not_after.map(when),
        paths: issued.paths,
    })
}

/// The key and CSR `issue` and `csr` make, from their shared arguments.
fn csr_request(
    name: String,
    subject: &SubjectArgs,
    key_type: pki_core::KeyType,
    names: NameArgs,
    out: PathBuf,
    force: bool,
) -> provision::Result<CsrRequest> {
    Ok(CsrRequest {
        name: Name::new(name)?,
        subject: subject.options(),
        key_type,
        dns: names.dns,
        ip: names.ip,
        out,
        force,
        token: None,
    })
}

pub(crate) fn csr(args: CsrArgs) -> anyhow::Result<CsrMade> {
    let token = new_key_spec(args.key_uri.as_deref(), &args.name, args.pin_env.as_deref())?;
    let paths = make_csr(&CsrRequest {
        token,
        ..csr_request(
            args.name,
            &args.subject,
            args.key_type,
            args.names,
            args.out,
            args.force,
        )?
    })?;
    Ok(CsrMade {
        key: paths.key,
        csr: paths.csr,
    })
}

pub(crate) fn sign(args: SignArgs) -> anyhow::Result<Signed> {
    let out = args.out.unwrap_or_else(|| layout::cert_for_csr(&args.csr));
    let (dir, ca) = args.ca.load()?;
    let inventory = Inventory::open(&dir)?;
    let mut locked = inventory.lock(&ca)?;
    let signed = sign_csr(
        &mut locked,
        &SignRequest {
            csr: args.csr,
            profile: args.profile.into(),
            days: args.days,
            out: out.clone(),
            force: args.force,
            dns: args.dns,
            ip: args.ip,
            accept_csr_names: args.accept_csr_names,
            allow_wildcards: args.allow_wildcards,
            role: args.role,
        },
    )?;
    let brokers = apply(&inventory, &locked.commit()?)?;
    let cert = &signed.certificate;
    Ok(Signed {
        brokers,
        subject: cert.subject(),
        cert: out,
        serial: cert.serial().to_string(),
        not_after: when(cert.not_after()),
        granted: signed
            .granted
            .iter()
            .map(SubjectAltName::to_string)
            .collect(),
        refused: signed
            .refused
            .iter()
            .map(|r| RefusedName {
                name: r.san.to_string(),
                reason: r.reason.to_string(),
            })
            .collect(),
        superseded: serials(&signed.superseded),
        capped: signed.capped_not_after.is_some(),
    })
}

pub(crate) fn inspect(args: InspectArgs) -> anyhow::Result<provision::inspect::Inspection> {
    Ok(provision::inspect::inspect(&args.file)?)
}

pub(crate) fn verify(args: VerifyArgs) -> anyhow::Result<Verified> {
    let name = args.dns.or_else(|| args.ip.map(|i| i.to_string()));
    let ca_dir = provision::ca_folder::CaDir::new(&args.ca_dir);
    let verification = provision::inspect::verify(&provision::inspect::VerifyRequest {
        cert: &args.cert,
        ca: &args.ca,
        profile: args.profile.map(Into::into),
        name,
        crl: args.crl.as_deref(),
        ca_dir: (!args.no_crl).then_some(&ca_dir),
    })?;
    Ok(Verified {
        revocation_checked_against: verification.crl.clone(),
        valid: true,
        shown: verification.to_string(),
        detail: verification.summary,
        chain: verification.chain,
    })
}

/// `list`: streamed as it is read (a million records are never all in
/// memory), as a table or a JSON array.
pub(crate) fn list(args: ListArgs, json: bool) -> anyhow::Result<()> {
    let inventory = Inventory::open(&args.ca.dir())?;
    let filter = Filter {
        common_names: args.name.into_iter().collect(),
        valid_only: args.valid,
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut n = 0usize;
    let io = |source| provision::Error::Io {
        action: "writing",
        path: "standard output".into(),
        source,
    };
    if json {
        writeln!(out, "[")?;
    } else {
        writeln!(
            out,
            "{:<40}  {:<7}  {:<20}  {:<8}  SUBJECT",
            "SERIAL", "PROFILE", "NOT AFTER", "STATUS"
        )?;
    }
    inventory.visit(&filter, |r: Record| {
        if json {
            let sep = if n == 0 { "  " } else { ", " };
            let line = serde_json::to_string(&r).map_err(|e| io(e.into()))?;
            writeln!(out, "{sep}{line}").map_err(io)?;
        } else {
            let status = match &r.status {
                Status::Valid => "valid",
                Status::Revoked { .. } => "revoked",
            };
            writeln!(
                out,
                "{:<40}  {:<7}  {:<20}  {:<8}  {}",
                r.serial.to_string(),
                r.profile.as_str(),
                r.not_after.to_string(),
                status,
                r.subject
            )
            .map_err(io)?;
        }
        n += 1;
        Ok(())
    })?;
    if json {
        writeln!(out, "]")?;
    } else {
        writeln!(out, "{n} certificate(s) in {}", inventory.location())?;
    }
    out.flush()?;
    Ok(())
}

pub(crate) fn revoke(args: RevokeArgs) -> anyhow::Result<Revoked> {
    let target = match (args.cert, args.serial, args.name) {
        (Some(path), None, None) => RevokeTarget::File(path),
        (None, Some(s), None) => RevokeTarget::Serial(s),
        (None, None, Some(name)) => RevokeTarget::Name(name),
        _ => bail!("give one of: a certificate file, --serial HEX or --name NAME"),
    };
    let name = match &target {
        RevokeTarget::Name(n) => Some(n.clone()),
        _ => None,
    };
    let (dir, ca) = args.ca.load()?;
    let inventory = Inventory::open(&dir)?;
    let mut locked = inventory.lock(&ca)?;
    let revocation = ops::revoke(&mut locked, &target, args.reason, args.crl_days)?;
    // Each broker's plugin takes the certificate's connections off
    // (unless it was superseded: a renewal's old certificate, whose device
    // moves to its new one at its own pace).
    let brokers = apply(&inventory, &locked.commit()?)?;
    let text = |v: Vec<Serial>| v.iter().map(ToString::to_string).collect();
    Ok(Revoked {
        name,
        certificates: revocation
            .records
            .into_iter()
            .map(|(record, change)| RevokedCert { record, change })
            .collect(),
        renewals: text(revocation.renewals),
        withdrawn: text(revocation.withdrawn),
        still_valid: revocation.still_valid,
        crl: dir.crl_path(),
        brokers,
    })
}

pub(crate) fn crl(args: CrlArgs) -> anyhow::Result<CrlWritten> {
    let dir = args.ca.dir();
    let out = args.out.clone().unwrap_or_else(|| dir.crl_path());
    if args.if_due {
        // Whatever is due here, this host's folders catch up with a CRL
        // another host signed into a shared inventory.
        // Best effort: a catch-up that fails keeps no due CRL from being
        // signed (below).
        let brokers = match Inventory::open(&dir)
            .map_err(anyhow::Error::from)
            .and_then(|inventory| apply(&inventory, &Committed::default()))
        {
            Ok(brokers) => brokers,
            Err(e) => {
                eprintln!("warning: bringing the folders up to the inventory's CRL: {e:#}");
                Brokers::default()
            }
        };
        if !provision::ops::crl_due(&out, std::time::SystemTime::now()) {
            let current = pki_core::Crl::from_pem(&provision::files::read_text(&out)?)?;
            return Ok(CrlWritten {
                written: false,
                brokers,
                path: out,
                number: current.number().unwrap_or_default(),
                revoked: current.entries().len(),
                this_update: when(current.this_update()),
                next_update: current.next_update().map(when).unwrap_or_default(),
            });
        }
    }
    let (dir, ca) = args.ca.load()?;
    let lifetime = args.crl_lifetime.unwrap_or(Duration::from_secs(
        u64::from(args.crl_days.max(1)) * 86_400,
    ));
    let inventory = Inventory::open(&dir)?;
    let mut locked = inventory.lock(&ca)?;
    let crl = write_crl(&mut locked, &out, lifetime)?;
    let brokers = apply(&inventory, &locked.commit()?)?;
    Ok(CrlWritten {
        written: true,
        brokers,
        path: out,
        number: crl.number().unwrap_or_default(),
        revoked: crl.entries().len(),
        this_update: when(crl.this_update()),
        next_update: crl.next_update().map(when).unwrap_or_default(),
    })
}

pub(crate) fn fleet_plan(args: FleetArgs) -> anyhow::Result<FleetPlanned> {
    let plan = provision::fleet::plan(
        &args.manifest,
        &provision::fleet::RunOptions {
            jobs: args.jobs,
            inventory_url: args.inventory.url.clone(),
            insecure_db: args.inventory.insecure_db,
        },
    )?;
    Ok(FleetPlanned {
        manifest: args.manifest,
        plan,
    })
}

pub(crate) fn fleet(args: FleetArgs) -> anyhow::Result<FleetDone> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} identities ({per_sec})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let progress = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let started = std::time::Instant::now();
    let summary = provision::fleet::run(
        &args.manifest,
        &provision::fleet::RunOptions {
            jobs: args.jobs,
            inventory_url: args.inventory.url.clone(),
            insecure_db: args.inventory.insecure_db,
        },
        &progress,
    )?;
    bar.finish_and_clear();
    let brokers = Brokers(summary.applied);
    Ok(FleetDone {
        manifest: args.manifest,
        ca_cert: provision::ca_folder::CaDir::new(&summary.ca_dir).cert_path(),
        ca_dir: summary.ca_dir,
        ca_created: summary.ca_created,
        issued: summary.issued,
        kept: summary.kept,
        replaced: summary.replaced,
        renewed_elsewhere: summary.renewed_elsewhere,
        brokers: summary
            .brokers
            .into_iter()
            .map(|(name, paths)| FleetIdentity { name, paths })
            .collect(),
        device_folders: summary.device_folders,
        first_device: summary
            .first_device
            .map(|(name, paths)| FleetIdentity { name, paths }),
        first_service: summary
            .first_service
            .map(|(name, paths)| FleetIdentity { name, paths }),
        seconds: started.elapsed().as_secs_f64(),
        refreshed: brokers,
        role_changed: summary.role_changed,
    })
}

pub(crate) fn broker_config(args: BrokerConfigArgs) -> anyhow::Result<BrokerWritten> {
    let enforcement = match (args.plugin, args.without_plugin) {
        (_, true) => provision::broker::Enforcement::AclFileOnly,
        (Some(path), false) => provision::broker::Enforcement::Plugin(path),
        (None, false) => provision::broker::Enforcement::Plugin(
            provision::broker::default_plugin().with_context(|| {
                format!(
                    "the broker plugin {} is not beside this program (nor in /usr/lib/mqtt-mtls/): \
                     build it with `cargo build --release -p mosquitto-plugin` and give it with \
                     --plugin PATH (or `cargo xtask provision`, which builds both), or pass \
                     --without-plugin for Mosquitto's acl_file, which never checks SUBSCRIBE",
                    provision::layout::PLUGIN_FILE
                )
            })?,
        ),
    };
    let (dir, ca) = args.ca.load()?;
    let inventory = Inventory::open(&dir)?;
    let mut locked = inventory.lock(&ca)?;
    let files = provision::broker::write(
        &mut locked,
        &provision::broker::BrokerConfig {
            server: args.server,
            certs_dir: args.certs_dir,
            out: args.out,
            port: args.port,
            bind: args.bind,
            enroll_port: args.enroll_port,
            force: args.force,
            enforcement,
            max_packet_size: args.max_packet_size,
        },
    )?;
    // The new folder is in step already; the others too, now.
    apply(&inventory, &locked.commit()?)?;
    let systemd = if args.systemd {
        let exe = std::env::current_exe().context("finding this program's path")?;
        provision::broker::write_systemd_units(
            files
                .paths
                .config
                .parent()
                .unwrap_or(std::path::Path::new(".")),
            &dir,
            &exe,
            &args.crl_lifetime,
        )?
        .to_vec()
    } else {
        Vec::new()
    };
    Ok(BrokerWritten {
        systemd,
        paths: files.paths,
        with_crl: files.crl,
    })
}

pub(crate) fn publish(args: PubArgs) -> anyhow::Result<Published> {
    let payload = match args.message {
        Some(m) => m.into_bytes(),
        None => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("reading the message from standard input")?;
            buf
        }
    };
    let conn = &args.conn;
    let identity = conn.identity()?;
    let bytes = payload.len();
    runtime()?.block_on(provision::pubsub::publish(
        &identity,
        &conn.endpoint(),
        &conn.topic,
        payload,
        conn.qos,
        args.retain,
    ))?;
    eprintln!("published to {} (QoS {})", conn.topic, u8::from(conn.qos));
    Ok(Published {
        topic: conn.topic.clone(),
        qos: conn.qos.into(),
        bytes,
    })
}

/// `sub`: prints each message as it arrives (its payload, or with `--json`
/// one JSON object per line).
pub(crate) fn subscribe(args: SubArgs, json: bool) -> anyhow::Result<()> {
    use base64::Engine;
    use provision::pubsub::Received;
    let conn = &args.conn;
    let identity = conn.identity()?;
    let received = runtime()?.block_on(provision::pubsub::subscribe(
        &identity,
        &conn.endpoint(),
        &conn.topic,
        conn.qos,
        args.count,
        args.timeout.map(Duration::from_secs),
        |received| match received {
            Received::Message { topic, payload } if json => {
                let text = std::str::from_utf8(payload).ok();
                let message = Message {
                    topic,
                    payload: text,
                    payload_base64: text
                        .is_none()
                        .then(|| base64::engine::general_purpose::STANDARD.encode(payload)),
                };
                println!("{}", serde_json::to_string(&message).unwrap_or_default());
            }
            Received::Message { payload, .. } => {
                println!("{}", String::from_utf8_lossy(payload));
            }
            Received::Dropped { topic, reason } => {
                eprintln!("warning: a message on {topic} was dropped: {reason}");
            }
        },
    ))?;
    if let Some(c) = args.count
        && received < c
    {
        bail!("timed out after {received} of {c} messages");
    }
    Ok(())
}

pub(crate) fn audit(args: AuditArgs) -> anyhow::Result<Audited> {
    let inventory = Inventory::open(&args.ca.dir())?;
    let report = provision::audit::run(
        &inventory,
        Duration::from_secs(u64::from(args.days) * 86_400),
    )?;
    Ok(Audited {
        inventory: inventory.location().to_owned(),
        report,
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}
