//! `provision`: the command line. Parsing and printing only; the work is in
//! the library.

use std::io::{IsTerminal, Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use zeroize::Zeroizing;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use mqtt_tls::{ClientCert, QoS};
use pki_core::{DnsName, KeyType, Profile, RevocationReason, Serial};
use provision::inspect::{VerifyRequest, inspect, verify};
use provision::inventory::{Filter, Inventory, Status};
use provision::ops::{
    CsrRequest, InitCa, IssueRequest, RevokeTarget, SignRequest, SubjectOptions, init_ca_archiving,
    issue, make_csr, revoke, sign_csr, when, write_crl,
};
use provision::pubsub::Endpoint;
use provision::store::CaDir;

const AFTER_HELP: &str = "\
Examples (the original design's layout):
  provision init-ca --cn MyRootCA --org MyOrg --country US
  provision issue client client1
  provision issue server broker --dns localhost --ip 127.0.0.1
  provision broker-config --server broker --out broker
  provision verify backend_certs/client1_cert.pem --profile client
  provision fleet fleet.toml";

/// Certificates for MQTT over mutual TLS: a CA, broker and device
/// certificates, CRLs, broker configuration, and pub/sub to try them.
#[derive(Parser)]
#[command(name = "provision", version, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a self-signed root CA: DIR/root_ca_cert.pem and DIR/root_ca.key.
    #[command(
        after_help = "Example:\n  provision init-ca --dir root_cert --cn MyRootCA --org MyOrg --country US --passphrase-env CA_PASS"
    )]
    InitCa {
        /// The CA folder.
        #[arg(long, default_value = "root_cert")]
        dir: PathBuf,
        #[command(flatten)]
        subject: SubjectArgs,
        /// Key type.
        #[arg(long, default_value = "p256", value_parser = parse_key_type)]
        key_type: KeyType,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
        /// Encrypt the CA key with the passphrase in this environment variable.
        #[arg(long, value_name = "VAR", conflicts_with = "encrypt")]
        passphrase_env: Option<String>,
        /// Encrypt the CA key with a passphrase typed at the terminal (asked twice).
        #[arg(long)]
        encrypt: bool,
        /// Replace an existing CA.
        #[arg(long)]
        force: bool,
    },
    /// Issue a key, CSR and certificate: OUT/NAME.key, OUT/NAME_csr.pem, OUT/NAME_cert.pem.
    #[command(subcommand)]
    Issue(IssueCommand),
    /// Make a key and CSR on the device side (no CA involved).
    #[command(
        after_help = "Example:\n  provision csr sensor-7 --out device/\n  provision sign device/sensor-7_csr.pem --profile client"
    )]
    Csr {
        /// File-name stem: NAME.key and NAME_csr.pem.
        name: String,
        /// Output folder.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        #[command(flatten)]
        subject: SubjectArgs,
        /// Key type.
        #[arg(long, default_value = "p256", value_parser = parse_key_type)]
        key_type: KeyType,
        #[command(flatten)]
        names: NameArgs,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Sign a CSR with the CA (its signature is verified first).
    #[command(
        after_help = "Example:\n  provision sign device/sensor-7_csr.pem --profile client --out device/sensor-7_cert.pem"
    )]
    Sign {
        /// The CSR (PEM).
        csr: PathBuf,
        /// Client or server.
        #[arg(long, value_enum)]
        profile: ProfileArg,
        #[command(flatten)]
        ca: CaArgs,
        /// Where to write the certificate (default: the CSR's name with _cert.pem).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Replace an existing certificate file.
        #[arg(long)]
        force: bool,
        /// A DNS name to grant (repeatable); a server certificate needs
        /// names from --dns/--ip or --accept-csr-names.
        #[arg(long)]
        dns: Vec<pki_core::DnsName>,
        /// An IP address to grant (repeatable).
        #[arg(long)]
        ip: Vec<std::net::IpAddr>,
        /// Also grant the names the CSR asks for (wildcards only with
        /// --allow-wildcards; malformed URIs never).
        #[arg(long)]
        accept_csr_names: bool,
        /// Allow wildcard DNS names (*.example.com).
        #[arg(long)]
        allow_wildcards: bool,
    },
    /// Show a certificate, CSR, key or CRL.
    #[command(after_help = "Example:\n  provision inspect backend_certs/client1_cert.pem --json")]
    Inspect {
        /// The PEM file.
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check a certificate against the CA; exit 0 only when valid.
    #[command(
        after_help = "Examples:\n  provision verify backend_certs/client1_cert.pem --profile client\n  provision verify backend_certs/broker_cert.pem --profile server --dns localhost"
    )]
    Verify {
        /// The certificate (PEM).
        cert: PathBuf,
        /// The CA certificate(s).
        #[arg(long, default_value = "root_cert/root_ca_cert.pem")]
        ca: PathBuf,
        /// Check the usage for this profile.
        #[arg(long, value_enum)]
        profile: Option<ProfileArg>,
        /// The DNS name it must be valid for.
        #[arg(long, conflicts_with = "ip")]
        dns: Option<String>,
        /// The IP address it must be valid for.
        #[arg(long)]
        ip: Option<IpAddr>,
        /// Also check revocation against this CRL.
        #[arg(long)]
        crl: Option<PathBuf>,
    },
    /// List everything the CA issued.
    #[command(after_help = "Example:\n  provision list --json")]
    List {
        #[command(flatten)]
        ca: CaArgs,
        /// Only certificates with this common name (the identity's name).
        #[arg(long)]
        name: Option<String>,
        /// Only certificates not revoked.
        #[arg(long)]
        valid: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a certificate (by file or serial) and rewrite the CRL.
    #[command(
        after_help = "Examples:\n  provision revoke backend_certs/client1_cert.pem --reason key-compromise\n  provision revoke --serial 4F2A..."
    )]
    Revoke {
        /// The certificate to revoke.
        #[arg(required_unless_present = "serial")]
        cert: Option<PathBuf>,
        /// The serial (hex) to revoke.
        #[arg(long, conflicts_with = "cert")]
        serial: Option<String>,
        /// Why: unspecified, key-compromise, ca-compromise, affiliation-changed,
        /// superseded, cessation-of-operation, privilege-withdrawn.
        #[arg(long, default_value = "unspecified")]
        reason: String,
        #[command(flatten)]
        ca: CaArgs,
        /// Days until the CRL's nextUpdate.
        #[arg(long, default_value_t = 30)]
        crl_days: u32,
    },
    /// Write the CRL (default CA_DIR/crl.pem).
    #[command(after_help = "Example:\n  provision crl --out root_cert/crl.pem")]
    Crl {
        #[command(flatten)]
        ca: CaArgs,
        /// Where to write it.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Days until nextUpdate.
        #[arg(long, default_value_t = 30)]
        days: u32,
    },
    /// Provision a CA, brokers and devices from a TOML manifest.
    #[command(
        after_help = "Example manifest:\n  [ca]\n  dir = \"root_cert\"\n  common_name = \"Fleet Root\"\n  [[broker]]\n  name = \"broker\"\n  dns = [\"localhost\"]\n  ip = [\"127.0.0.1\"]\n  [[devices]]\n  prefix = \"sensor-\"\n  count = 10000"
    )]
    Fleet {
        /// The manifest.
        manifest: PathBuf,
        /// Worker threads (default: one per core).
        #[arg(long, default_value_t = 0)]
        jobs: usize,
        /// Print what was made as JSON (the CA folder, each broker's files,
        /// the device folders, counts) instead of a sentence.
        #[arg(long)]
        json: bool,
        /// The inventory in PostgreSQL (postgres://USER@HOST/DB) instead of
        /// SQLite in the CA folder.
        #[arg(
            long,
            value_name = "URL",
            env = "PROVISION_INVENTORY",
            hide_env_values = true
        )]
        inventory: Option<String>,
    },
    /// Write a Mosquitto configuration for mutual TLS.
    #[command(
        after_help = "Example:\n  provision broker-config --server broker --out broker\n  mosquitto -c broker/mosquitto.conf"
    )]
    BrokerConfig {
        /// The broker identity's name.
        #[arg(long, default_value = "broker")]
        server: String,
        /// Where the broker identity was issued.
        #[arg(long, default_value = "backend_certs")]
        certs_dir: PathBuf,
        #[command(flatten)]
        ca: CaArgs,
        /// Output folder.
        #[arg(long, default_value = "broker")]
        out: PathBuf,
        /// TLS listener port.
        #[arg(long, default_value_t = 8883)]
        port: u16,
        /// Listen on this address only.
        #[arg(long)]
        bind: Option<String>,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Publish one message over mutual TLS.
    #[command(
        after_help = "Example:\n  provision pub --topic test/data --message hello \\\n    --cert backend_certs/client1_cert.pem --key backend_certs/client1.key --ca root_cert/root_ca_cert.pem"
    )]
    Pub {
        #[command(flatten)]
        conn: ConnArgs,
        /// The message (default: read standard input).
        #[arg(long, short)]
        message: Option<String>,
        /// Ask the broker to retain it.
        #[arg(long)]
        retain: bool,
    },
    /// Subscribe and print each message's payload.
    #[command(
        after_help = "Example:\n  provision sub --topic 'test/#' --count 1 --bundle client1.toml"
    )]
    Sub {
        #[command(flatten)]
        conn: ConnArgs,
        /// Exit after this many messages.
        #[arg(long, short = 'C')]
        count: Option<usize>,
        /// Exit after this many seconds.
        #[arg(long, short = 'W')]
        timeout: Option<u64>,
    },
}

#[derive(Subcommand)]
enum IssueCommand {
    /// A client (device or backend) certificate: EKU clientAuth.
    #[command(after_help = "Example:\n  provision issue client client1 --org MyOrg --country US")]
    Client(IssueArgs),
    /// A server (broker) certificate: EKU serverAuth; needs --dns or --ip.
    #[command(
        after_help = "Example:\n  provision issue server broker --dns mqtt.example.com --ip 10.0.0.5"
    )]
    Server(IssueArgs),
}

#[derive(Args)]
struct IssueArgs {
    /// File-name stem: NAME.key, NAME_csr.pem, NAME_cert.pem; the default CN.
    name: String,
    #[command(flatten)]
    ca: CaArgs,
    /// Output folder.
    #[arg(long, default_value = "backend_certs")]
    out: PathBuf,
    #[command(flatten)]
    subject: SubjectArgs,
    /// Key type.
    #[arg(long, default_value = "p256", value_parser = parse_key_type)]
    key_type: KeyType,
    /// Validity in days (capped at the CA's expiry).
    #[arg(long, default_value_t = 365)]
    days: u32,
    #[command(flatten)]
    names: NameArgs,
    /// Replace existing files.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct CaArgs {
    /// The CA folder.
    #[arg(long, default_value = "root_cert")]
    ca_dir: PathBuf,
    /// The environment variable holding the CA key's passphrase.
    #[arg(long, value_name = "VAR")]
    passphrase_env: Option<String>,
    /// The inventory in PostgreSQL (postgres://USER@HOST/DB) instead of
    /// SQLite in the CA folder.
    #[arg(
        long,
        value_name = "URL",
        env = "PROVISION_INVENTORY",
        hide_env_values = true
    )]
    inventory: Option<String>,
}

#[derive(Args)]
struct SubjectArgs {
    /// Common name (default: the name).
    #[arg(long)]
    cn: Option<String>,
    /// Organization.
    #[arg(long)]
    org: Option<String>,
    /// Two-letter country code.
    #[arg(long)]
    country: Option<String>,
}

#[derive(Args)]
struct NameArgs {
    /// DNS subject alternative name (repeatable).
    #[arg(long, value_parser = parse_dns)]
    dns: Vec<DnsName>,
    /// IP subject alternative name (repeatable).
    #[arg(long)]
    ip: Vec<IpAddr>,
}

#[derive(Args)]
struct ConnArgs {
    /// Client certificate.
    #[arg(long, requires_all = ["key", "ca"], conflicts_with = "bundle")]
    cert: Option<PathBuf>,
    /// Client key.
    #[arg(long)]
    key: Option<PathBuf>,
    /// CA certificate.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// A TOML file with a [tls] table (cert_path, key_path, ca_cert_path).
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// The environment variable holding the client key's passphrase (for
    /// an encrypted key; a bundle file says it with `passphrase_env`).
    #[arg(long, value_name = "VAR", conflicts_with = "bundle")]
    passphrase_env: Option<String>,
    /// Broker host (DNS name or IP address).
    #[arg(long, short = 'H', default_value = "localhost")]
    host: String,
    /// Broker port.
    #[arg(long, short, default_value_t = 8883)]
    port: u16,
    /// Topic (a filter for sub).
    #[arg(long, short)]
    topic: String,
    /// QoS 0, 1 or 2.
    #[arg(long, short, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Client id (default: provision-<pid>).
    #[arg(long, short = 'i')]
    client_id: Option<String>,
    /// The largest MQTT packet to send (pub refuses a bigger message
    /// before any of it is sent) and to accept, in bytes (default: send up
    /// to 1 MiB, accept anything MQTT allows).
    #[arg(long, value_name = "BYTES")]
    max_packet_size: Option<usize>,
}

#[derive(Clone, Copy, ValueEnum)]
enum ProfileArg {
    Client,
    Server,
}

impl From<ProfileArg> for Profile {
    fn from(p: ProfileArg) -> Self {
        match p {
            ProfileArg::Client => Profile::Client,
            ProfileArg::Server => Profile::Server,
        }
    }
}

fn parse_key_type(s: &str) -> Result<KeyType, String> {
    s.parse().map_err(|e: pki_core::Error| e.to_string())
}

fn parse_dns(s: &str) -> Result<DnsName, String> {
    s.parse().map_err(|e: pki_core::Error| e.to_string())
}

impl SubjectArgs {
    fn options(&self) -> SubjectOptions {
        SubjectOptions {
            common_name: self.cn.clone(),
            organization: self.org.clone(),
            country: self.country.clone(),
        }
    }
}

impl CaArgs {
    fn dir(&self) -> CaDir {
        CaDir::new(&self.ca_dir).with_inventory_url(self.inventory.clone())
    }

    fn passphrase(&self) -> anyhow::Result<Option<Zeroizing<Vec<u8>>>> {
        passphrase(self.passphrase_env.as_deref())
    }

    /// Loads the CA; an encrypted key without `--passphrase-env` is
    /// unlocked with a passphrase typed at the terminal, when there is one.
    fn load(&self) -> anyhow::Result<(CaDir, pki_core::CertificateAuthority)> {
        let dir = self.dir();
        let ca = match dir.load(self.passphrase()?.as_ref().map(|p| p.as_slice())) {
            Err(provision::Error::Passphrase { path, .. })
                if self.passphrase_env.is_none() && std::io::stdin().is_terminal() =>
            {
                let typed = Zeroizing::new(
                    rpassword::prompt_password(format!("passphrase for {}: ", path.display()))
                        .with_context(|| {
                            format!("reading the passphrase for {}", path.display())
                        })?,
                );
                dir.load(Some(typed.as_bytes()))?
            }
            other => other?,
        };
        Ok((dir, ca))
    }
}

/// A new passphrase for `key`, typed twice at the terminal.
fn new_passphrase(key: &Path) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    if !std::io::stdin().is_terminal() {
        bail!(
            "--encrypt asks for the passphrase at a terminal; without one, use --passphrase-env VAR"
        );
    }
    let ask = |prompt: String| {
        rpassword::prompt_password(prompt).context("reading the passphrase from the terminal")
    };
    let first = Zeroizing::new(ask(format!("new passphrase for {}: ", key.display()))?);
    if first.is_empty() {
        bail!("the passphrase must not be empty");
    }
    if *Zeroizing::new(ask("again: ".to_owned())?) != *first {
        bail!("the two passphrases differ; nothing was written");
    }
    Ok(Zeroizing::new(first.as_bytes().to_vec()))
}

fn passphrase(var: Option<&str>) -> anyhow::Result<Option<Zeroizing<Vec<u8>>>> {
    match var {
        None => Ok(None),
        Some(var) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok(Some(Zeroizing::new(v.into_bytes()))),
            _ => bail!("the passphrase variable {var} is not set (or empty)"),
        },
    }
}

impl ConnArgs {
    fn identity(&self) -> anyhow::Result<mqtt_tls::TlsIdentity> {
        let bundle = match (&self.bundle, &self.cert, &self.key, &self.ca) {
            (Some(file), ..) => {
                #[derive(serde::Deserialize)]
                struct BundleFile {
                    tls: ClientCert,
                }
                let text = provision::files::read_text(file)?;
                let parsed: BundleFile = toml::from_str(&text)
                    .with_context(|| format!("{}: not a bundle file", file.display()))?;
                parsed
                    .tls
                    .relative_to(file.parent().unwrap_or(Path::new(".")))
            }
            (None, Some(cert), Some(key), Some(ca)) => ClientCert {
                passphrase_env: self.passphrase_env.clone(),
                ..ClientCert::new(cert, key, ca)
            },
            _ => bail!("give --cert, --key and --ca, or --bundle FILE.toml"),
        };
        Ok(bundle.load()?)
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint {
            host: self.host.clone(),
            port: self.port,
            client_id: self
                .client_id
                .clone()
                .unwrap_or_else(|| format!("provision-{}", std::process::id())),
            max_packet_size: self.max_packet_size,
        }
    }

    fn qos(&self) -> QoS {
        match self.qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::InitCa {
            dir,
            subject,
            key_type,
            days,
            passphrase_env,
            encrypt,
            force,
        } => {
            let ca_dir = CaDir::new(&dir);
            let passphrase = if encrypt {
                Some(new_passphrase(&ca_dir.key_path())?)
            } else {
                passphrase(passphrase_env.as_deref())?
            };
            let encrypted = passphrase.is_some();
            let (ca, archived) = init_ca_archiving(
                &ca_dir,
                &InitCa {
                    subject: subject.options(),
                    key_type,
                    days,
                    passphrase,
                    force,
                },
            )?;
            if let Some(archive) = archived {
                println!(
                    "the previous CA (key, certificate, inventory, CRL) moved to the archive {}",
                    archive.display()
                );
            }
            println!("created CA {}", ca.certificate().subject());
            println!("  certificate: {}", ca_dir.cert_path().display());
            println!(
                "  key:         {} (0600{})",
                ca_dir.key_path().display(),
                if encrypted { ", encrypted" } else { "" }
            );
            println!("  valid until: {}", when(ca.certificate().not_after()));
        }
        Command::Issue(cmd) => {
            let (profile, args) = match cmd {
                IssueCommand::Client(a) => (Profile::Client, a),
                IssueCommand::Server(a) => (Profile::Server, a),
            };
            let (dir, ca) = args.ca.load()?;
            let inventory = Inventory::open(&dir)?;
            let mut locked = inventory.lock(&ca)?;
            let issued = issue(
                &mut locked,
                &IssueRequest {
                    identity: CsrRequest {
                        name: args.name,
                        subject: args.subject.options(),
                        key_type: args.key_type,
                        dns: args.names.dns,
                        ip: args.names.ip,
                        out: args.out,
                        force: args.force,
                    },
                    profile,
                    days: args.days,
                },
            )?;
            locked.commit()?;
            println!(
                "issued {profile} certificate {}",
                issued.certificate.subject()
            );
            println!("  key:         {} (0600)", issued.paths.key.display());
            println!("  CSR:         {}", issued.paths.csr.display());
            println!("  certificate: {}", issued.paths.cert.display());
            println!("  serial:      {}", issued.certificate.serial());
            println!("  valid until: {}", when(issued.certificate.not_after()));
            for serial in &issued.superseded {
                println!("  superseded:  {serial} (revoked; CRL rewritten)");
            }
            if let Some(requested) = issued.capped_not_after {
                println!(
                    "  note: the requested end {} is after the CA's expiry; cut to the CA's",
                    when(requested)
                );
            }
        }
        Command::Csr {
            name,
            out,
            subject,
            key_type,
            names,
            force,
        } => {
            let paths = make_csr(&CsrRequest {
                name,
                subject: subject.options(),
                key_type,
                dns: names.dns,
                ip: names.ip,
                out,
                force,
            })?;
            println!("key: {} (0600)", paths.key.display());
            println!("CSR: {}", paths.csr.display());
        }
        Command::Sign {
            csr,
            profile,
            ca,
            out,
            days,
            force,
            dns,
            ip,
            accept_csr_names,
            allow_wildcards,
        } => {
            let out = out.unwrap_or_else(|| provision::layout::cert_for_csr(&csr));
            let (dir, ca) = ca.load()?;
            let inventory = Inventory::open(&dir)?;
            let mut locked = inventory.lock(&ca)?;
            let signed = sign_csr(
                &mut locked,
                &SignRequest {
                    csr,
                    profile: profile.into(),
                    days,
                    out: out.clone(),
                    force,
                    dns,
                    ip,
                    accept_csr_names,
                    allow_wildcards,
                },
            )?;
            locked.commit()?;
            let cert = &signed.certificate;
            println!("signed {} -> {}", cert.subject(), out.display());
            println!("  serial:      {}", cert.serial());
            println!("  valid until: {}", when(cert.not_after()));
            let granted: Vec<String> = signed.granted.iter().map(ToString::to_string).collect();
            println!("  granted: {}", granted.join(", "));
            for refused in &signed.refused {
                println!("  not granted: {} ({})", refused.san, refused.reason);
            }
            for serial in &signed.superseded {
                println!("  superseded:  {serial} (revoked; CRL rewritten)");
            }
            if signed.capped_not_after.is_some() {
                println!("  note: validity cut to the CA's expiry");
            }
        }
        Command::Inspect { file, json } => {
            let info = inspect(&file)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                println!("{info}");
            }
        }
        Command::Verify {
            cert,
            ca,
            profile,
            dns,
            ip,
            crl,
        } => {
            let name = dns.or_else(|| ip.map(|i| i.to_string()));
            let line = verify(&VerifyRequest {
                cert: &cert,
                ca: &ca,
                profile: profile.map(Into::into),
                name,
                crl: crl.as_deref(),
            })?;
            println!("{line}");
        }
        Command::List {
            ca,
            name,
            valid,
            json,
        } => {
            let inventory = Inventory::open(&ca.dir())?;
            let filter = Filter {
                common_name: name,
                valid_only: valid,
            };
            // Streamed: a million records are never all in memory.
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let mut n = 0usize;
            if json {
                writeln!(out, "[")?;
            } else {
                writeln!(
                    out,
                    "{:<40}  {:<7}  {:<20}  {:<8}  SUBJECT",
                    "SERIAL", "PROFILE", "NOT AFTER", "STATUS"
                )?;
            }
            inventory.visit(&filter, |r| {
                let line = if json {
                    let sep = if n == 0 { "  " } else { ", " };
                    serde_json::to_string(&r).map(|j| format!("{sep}{j}"))
                } else {
                    let status = match &r.status {
                        Status::Valid => "valid",
                        Status::Revoked { .. } => "revoked",
                    };
                    Ok(format!(
                        "{:<40}  {:<7}  {:<20}  {:<8}  {}",
                        r.serial.to_string(),
                        r.profile.as_str(),
                        r.not_after.to_string(),
                        status,
                        r.subject
                    ))
                };
                n += 1;
                let line = line.map_err(|e| provision::Error::Inventory {
                    location: inventory.location().to_owned(),
                    reason: e.to_string(),
                })?;
                writeln!(out, "{line}").map_err(|source| provision::Error::Io {
                    action: "writing",
                    path: "standard output".into(),
                    source,
                })
            })?;
            if json {
                writeln!(out, "]")?;
            } else {
                writeln!(out, "{n} certificate(s) in {}", inventory.location())?;
            }
            out.flush()?;
        }
        Command::Revoke {
            cert,
            serial,
            reason,
            ca,
            crl_days,
        } => {
            let reason: RevocationReason = reason.parse()?;
            let target = match (cert, serial) {
                (Some(path), None) => RevokeTarget::File(path),
                (None, Some(s)) => RevokeTarget::Serial(s.parse::<Serial>()?),
                _ => bail!("give a certificate file or --serial"),
            };
            let (dir, ca) = ca.load()?;
            let inventory = Inventory::open(&dir)?;
            let mut locked = inventory.lock(&ca)?;
            let record = revoke(&mut locked, &target, reason, crl_days)?;
            locked.commit()?;
            println!(
                "revoked {} (serial {}, {reason})",
                record.subject, record.serial
            );
            println!(
                "  CRL: {} (give it to the broker: crlfile)",
                dir.crl_path().display()
            );
        }
        Command::Crl { ca, out, days } => {
            let (dir, ca) = ca.load()?;
            let out = out.unwrap_or_else(|| dir.crl_path());
            let inventory = Inventory::open(&dir)?;
            let mut locked = inventory.lock(&ca)?;
            let crl = write_crl(&mut locked, &out, days)?;
            locked.commit()?;
            println!(
                "wrote {} (number {}, {} revoked)",
                out.display(),
                crl.number().unwrap_or_default(),
                crl.entries().len()
            );
        }
        Command::Fleet {
            manifest,
            jobs,
            json,
            inventory,
        } => {
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
                &manifest,
                &provision::fleet::RunOptions {
                    jobs,
                    inventory_url: inventory,
                },
                &progress,
            )?;
            bar.finish_and_clear();
            if json {
                let brokers: Vec<_> = summary
                    .brokers
                    .iter()
                    .map(|(name, paths)| {
                        serde_json::json!({
                            "name": name,
                            "key": paths.key,
                            "csr": paths.csr,
                            "cert": paths.cert,
                        })
                    })
                    .collect();
                let out = serde_json::json!({
                    "manifest": manifest,
                    "ca_dir": summary.ca_dir,
                    "ca_cert": provision::store::CaDir::new(&summary.ca_dir).cert_path(),
                    "ca_created": summary.ca_created,
                    "issued": summary.issued,
                    "kept": summary.kept,
                    "replaced": summary.replaced,
                    "renewed_elsewhere": summary.renewed_elsewhere,
                    "brokers": brokers,
                    "device_folders": summary.device_folders,
                });
                println!("{out:#}");
                return Ok(());
            }
            println!(
                "fleet {}: CA {} in {}; {} issued, {} already valid and kept ({:.1} s)",
                manifest.display(),
                if summary.ca_created {
                    "created"
                } else {
                    "kept"
                },
                summary.ca_dir.display(),
                summary.issued,
                summary.kept,
                started.elapsed().as_secs_f64()
            );
            if summary.renewed_elsewhere > 0 {
                println!(
                    "  {} of the kept were renewed elsewhere (the inventory's current \
                     certificate is newer than the one on disk): left as they are",
                    summary.renewed_elsewhere
                );
            }
            if summary.replaced > 0 {
                println!(
                    "  {} of them replaced a revoked, expiring or changed certificate, now \
                     revoked as superseded (CRL rewritten)",
                    summary.replaced
                );
            }
        }
        Command::BrokerConfig {
            server,
            certs_dir,
            ca,
            out,
            port,
            bind,
            force,
        } => {
            let files = provision::broker::write(
                &CaDir::new(&ca.ca_dir),
                &provision::broker::BrokerConfig {
                    server,
                    certs_dir,
                    out,
                    port,
                    bind,
                    force,
                },
            )?;
            println!(
                "wrote {}{}",
                files.config.display(),
                if files.crl { " (with the CRL)" } else { "" }
            );
            println!("start it with: mosquitto -c {}", files.config.display());
        }
        Command::Pub {
            conn,
            message,
            retain,
        } => {
            let payload = match message {
                Some(m) => m.into_bytes(),
                None => {
                    let mut buf = Vec::new();
                    std::io::stdin()
                        .read_to_end(&mut buf)
                        .context("reading the message from standard input")?;
                    buf
                }
            };
            let identity = conn.identity()?;
            runtime()?.block_on(provision::pubsub::publish(
                &identity,
                &conn.endpoint(),
                &conn.topic,
                payload,
                conn.qos(),
                retain,
            ))?;
            eprintln!("published to {} (QoS {})", conn.topic, conn.qos);
        }
        Command::Sub {
            conn,
            count,
            timeout,
        } => {
            let identity = conn.identity()?;
            use provision::pubsub::Received;
            let received = runtime()?.block_on(provision::pubsub::subscribe(
                &identity,
                &conn.endpoint(),
                &conn.topic,
                conn.qos(),
                count,
                timeout.map(Duration::from_secs),
                |received| match received {
                    Received::Message { payload, .. } => {
                        println!("{}", String::from_utf8_lossy(payload));
                    }
                    Received::Dropped { topic, reason } => {
                        eprintln!("warning: a message on {topic} was dropped: {reason}");
                    }
                },
            ))?;
            if let Some(c) = count
                && received < c
            {
                bail!("timed out after {received} of {c} messages");
            }
        }
    }
    Ok(())
}

/// The error and its causes on one line, leaving out causes whose text the
/// message already includes.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}
