//! The command line's definitions (clap): every command, its arguments
//! and help. Completions and the man page come from these
//! (`provision completions`, `provision man`).

use std::io::IsTerminal;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use mqtt_tls::{ClientCert, QoS};
use pki_core::{DnsName, KeyType, Profile, RevocationReason, Serial};
use provision::ca_folder::CaDir;
use provision::layout;
use provision::ops::SubjectOptions;
use provision::pubsub::Endpoint;
use provision::roles::Role;
use zeroize::Zeroizing;

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
pub(crate) struct Cli {
    /// Print the outcome as JSON instead of text (every command that
    /// prints data; `sub` prints one JSON object per message).
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Log to standard error as `text` (colour only at a terminal without
    /// NO_COLOR) or `json` (one object a line: time, level, target,
    /// message, fields); RUST_LOG chooses what (default: info for `serve`,
    /// warnings for the rest).
    #[arg(
        long,
        global = true,
        value_enum,
        value_name = "text|json",
        hide_possible_values = true,
        env = "PROVISION_LOG_FORMAT",
        default_value_t = service_log::LogFormat::Text
    )]
    pub(crate) log_format: service_log::LogFormat,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Create a self-signed root CA: DIR/root_ca_cert.pem and DIR/root_ca.key;
    /// with --intermediate, an intermediate CA under it that signs from then
    /// on (the root key can then go offline).
    #[command(
        after_help = "Examples:\n  provision init-ca --ca-dir root_cert --cn MyRootCA --org MyOrg --country US --passphrase-env CA_PASS\n  provision init-ca --intermediate --root-passphrase-env CA_PASS\n  mv root_cert/root_ca.key /offline/"
    )]
    InitCa(InitCaArgs),
    /// Issue a key, CSR and certificate: OUT/NAME.key, OUT/NAME_csr.pem, OUT/NAME_cert.pem.
    #[command(subcommand)]
    Issue(IssueCommand),
    /// Make a key and CSR on the device side (no CA involved).
    #[command(
        after_help = "Example:\n  provision csr sensor-7 --out device/\n  provision sign device/sensor-7_csr.pem --profile client"
    )]
    Csr(CsrArgs),
    /// Sign a CSR with the CA (its signature is verified first).
    #[command(
        after_help = "Example:\n  provision sign device/sensor-7_csr.pem --profile client --out device/sensor-7_cert.pem"
    )]
    Sign(SignArgs),
    /// Show a certificate, CSR, key or CRL.
    #[command(after_help = "Example:\n  provision inspect backend_certs/client1_cert.pem --json")]
    Inspect(InspectArgs),
    /// Check a certificate against the CA; exit 0 only when valid.
    #[command(
        after_help = "Examples:\n  provision verify backend_certs/client1_cert.pem --profile client\n  provision verify backend_certs/broker_cert.pem --profile server --dns localhost"
    )]
    Verify(VerifyArgs),
    /// List everything the CA issued.
    #[command(after_help = "Example:\n  provision list --json")]
    List(ListArgs),
    /// Revoke a certificate (by file or serial) and rewrite the CRL.
    #[command(
        after_help = "Examples:\n  provision revoke backend_certs/client1_cert.pem --reason key-compromise\n  provision revoke --serial 4F2A..."
    )]
    Revoke(RevokeArgs),
    /// Write the CRL (default CA_DIR/crl.pem).
    #[command(after_help = "Example:\n  provision crl --out root_cert/crl.pem")]
    Crl(CrlArgs),
    /// Provision a CA, brokers and devices from a TOML manifest.
    #[command(
        after_help = "Example manifest:\n  [ca]\n  dir = \"root_cert\"\n  common_name = \"Fleet Root\"\n  [[broker]]\n  name = \"broker\"\n  dns = [\"localhost\"]\n  ip = [\"127.0.0.1\"]\n  [[devices]]\n  prefix = \"sensor-\"\n  count = 10000"
    )]
    Fleet(FleetArgs),
    /// Write a Mosquitto configuration for mutual TLS.
    #[command(
        after_help = "Example:\n  provision broker-config --server broker --out broker\n  mosquitto -c broker/mosquitto.conf"
    )]
    BrokerConfig(BrokerConfigArgs),
    /// Publish one message over mutual TLS.
    #[command(
        after_help = "Example (a device publishes on its own topics):\n  provision pub --topic devices/client1/data --message hello \\\n    --cert backend_certs/client1_cert.pem --key backend_certs/client1.key --ca root_cert/root_ca_cert.pem"
    )]
    Pub(PubArgs),
    /// Subscribe and print each message's payload.
    #[command(
        after_help = "Example (a service reads every device):\n  provision sub --topic 'devices/#' --count 1 \\\n    --cert backend_certs/backend_cert.pem --key backend_certs/backend.key --ca root_cert/root_ca_cert.pem"
    )]
    Sub(SubArgs),
    /// Check the fleet: expiring certificates (and the CA), the CRL, revoked
    /// certificates still deployed, duplicate names, key permissions, the
    /// inventory against the files. Exit 1 when anything is found.
    #[command(
        after_help = "Example (daily, from a timer or monitoring):\n  provision audit --days 30 --json"
    )]
    Audit(AuditArgs),
    /// Run the CA as an MQTT service: enrollment with a claim certificate,
    /// renewal with a proof (docs/lifecycle.md).
    #[command(
        after_help = "Example:\n  provision issue client ca-service --role ca-service\n  provision serve --cert backend_certs/ca-service_cert.pem --key backend_certs/ca-service.key \\\n    --ca root_cert/root_ca_cert.pem --port 8883 --enroll-port 8884 --listen 127.0.0.1:9102"
    )]
    Serve(ServeArgs),
    /// Enroll this device through `provision serve` with a claim
    /// certificate: a new key stays here, a certificate comes back.
    #[command(
        after_help = "Example:\n  provision enroll sensor-7 --cert claim_cert.pem --key claim.key --ca root_ca_cert.pem --port 8884 --out device/"
    )]
    Enroll(EnrollArgs),
    /// Renew this identity through `provision serve`: a new key and
    /// certificate replace the files once the broker took them.
    #[command(
        after_help = "Example:\n  provision renew --cert device/sensor-7_cert.pem --key device/sensor-7.key --ca device/root_ca_cert.pem"
    )]
    Renew(RenewArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(
        after_help = "Example:\n  provision completions bash > /etc/bash_completion.d/provision"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    #[command(after_help = "Example:\n  provision man > provision.1 && man ./provision.1")]
    Man,
}

/// The arguments of `provision init-ca`.
#[derive(Args)]
pub(crate) struct InitCaArgs {
    /// The CA folder.
    #[arg(long, alias = "dir", default_value = layout::DEFAULT_CA_DIR)]
    pub(crate) ca_dir: PathBuf,
    #[command(flatten)]
    pub(crate) subject: SubjectArgs,
    /// Key type.
    #[arg(long, default_value = "p256", value_parser = parse::<KeyType>)]
    pub(crate) key_type: KeyType,
    /// Validity in days (an intermediate's is cut to the root's end).
    #[arg(long, default_value_t = 3650)]
    pub(crate) days: u32,
    /// Encrypt the new CA key (with --intermediate: the intermediate's)
    /// with the passphrase in this environment variable.
    #[arg(long, value_name = "VAR", conflicts_with = "encrypt")]
    pub(crate) passphrase_env: Option<String>,
    /// Encrypt the new CA key with a passphrase typed at the terminal (asked twice).
    #[arg(long)]
    pub(crate) encrypt: bool,
    /// Replace an existing CA, archived whole (with --intermediate: only
    /// the intermediate).
    #[arg(long)]
    pub(crate) force: bool,
    /// Make an intermediate CA signed by the root in DIR (whose key is
    /// needed this once): DIR/intermediate_ca_cert.pem and
    /// DIR/intermediate_ca.key (default CN "MQTT Intermediate CA"). It
    /// signs every certificate and CRL from then on; the root certificate
    /// stays the CA file of devices and brokers.
    #[arg(long)]
    pub(crate) intermediate: bool,
    /// With --intermediate: the environment variable holding the root
    /// key's passphrase (without it, an encrypted root key is asked for at
    /// a terminal).
    #[arg(long, value_name = "VAR", requires = "intermediate")]
    pub(crate) root_passphrase_env: Option<String>,
    /// Make the key inside a PKCS#11 token (an HSM, SoftHSM2), named by an
    /// RFC 7512 URI such as `pkcs11:token=ca;object=root`: sensitive, never
    /// extractable. The key file then records the URI (no PIN) and every
    /// command that signs uses the token. The module comes from
    /// `?module-path=` or $PKCS11_MODULE.
    #[arg(long, value_name = "URI", conflicts_with_all = ["passphrase_env", "encrypt"])]
    pub(crate) key_uri: Option<String>,
    /// With --key-uri: the environment variable holding the token's PIN
    /// (recorded by name with the URI, for the commands that sign later).
    #[arg(long, value_name = "VAR", requires = "key_uri")]
    pub(crate) pin_env: Option<String>,
    /// With --intermediate: the root key's token, when the root key file
    /// that records it is not in the CA folder (moved offline).
    #[arg(long, value_name = "URI", requires = "intermediate")]
    pub(crate) root_key_uri: Option<String>,
    /// With --root-key-uri: the environment variable holding the root
    /// token's PIN.
    #[arg(long, value_name = "VAR", requires = "root_key_uri")]
    pub(crate) root_pin_env: Option<String>,
    #[command(flatten)]
    pub(crate) inventory: InventoryArg,
}

/// The arguments of `provision csr`.
#[derive(Args)]
pub(crate) struct CsrArgs {
    /// File-name stem: NAME.key and NAME_csr.pem.
    pub(crate) name: String,
    /// Output folder.
    #[arg(long, default_value = ".")]
    pub(crate) out: PathBuf,
    #[command(flatten)]
    pub(crate) subject: SubjectArgs,
    /// Key type.
    #[arg(long, default_value = "p256", value_parser = parse::<KeyType>)]
    pub(crate) key_type: KeyType,
    #[command(flatten)]
    pub(crate) names: NameArgs,
    /// Replace existing files.
    #[arg(long)]
    pub(crate) force: bool,
    /// Make the key inside a PKCS#11 token (an HSM, a TPM through
    /// tpm2-pkcs11, SoftHSM2), named by an RFC 7512 URI such as
    /// `pkcs11:token=devices`: sensitive, never extractable, labelled NAME
    /// unless the URI gives `object=`. NAME.key then records the URI (no
    /// PIN), which `pub`, `sub`, `enroll` and `renew` sign through. The
    /// module comes from `?module-path=` or $PKCS11_MODULE.
    #[arg(long, value_name = "URI")]
    pub(crate) key_uri: Option<String>,
    /// With --key-uri: the environment variable holding the token's PIN
    /// (recorded by name in NAME.key).
    #[arg(long, value_name = "VAR", requires = "key_uri")]
    pub(crate) pin_env: Option<String>,
}

/// The arguments of `provision sign`.
#[derive(Args)]
pub(crate) struct SignArgs {
    /// The CSR (PEM).
    pub(crate) csr: PathBuf,
    /// Client or server.
    #[arg(long, value_enum)]
    pub(crate) profile: ProfileArg,
    #[command(flatten)]
    pub(crate) ca: CaArgs,
    /// Where to write the certificate (default: the CSR's name with _cert.pem).
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    /// Validity in days.
    #[arg(long, default_value_t = 365)]
    pub(crate) days: u32,
    /// Replace an existing certificate file.
    #[arg(long)]
    pub(crate) force: bool,
    /// A DNS name to grant (repeatable); a server certificate needs
    /// names from --dns/--ip or --accept-csr-names.
    #[arg(long)]
    pub(crate) dns: Vec<pki_core::DnsName>,
    /// An IP address to grant (repeatable).
    #[arg(long)]
    pub(crate) ip: Vec<std::net::IpAddr>,
    /// Also grant the names the CSR asks for (wildcards only with
    /// --allow-wildcards; malformed URIs never).
    #[arg(long)]
    pub(crate) accept_csr_names: bool,
    /// Allow wildcard DNS names (*.example.com).
    #[arg(long)]
    pub(crate) allow_wildcards: bool,
    /// A client's role, carried in its certificate (device, service or
    /// reader; never taken from the CSR).
    #[arg(long, default_value = "device", value_parser = parse_role)]
    pub(crate) role: Role,
}

/// The arguments of `provision inspect`.
#[derive(Args)]
pub(crate) struct InspectArgs {
    /// The PEM file.
    pub(crate) file: PathBuf,
}

/// The arguments of `provision verify`.
#[derive(Args)]
pub(crate) struct VerifyArgs {
    /// The certificate (PEM).
    pub(crate) cert: PathBuf,
    /// The CA certificate(s).
    #[arg(long, default_value = layout::DEFAULT_CA_CERT)]
    pub(crate) ca: PathBuf,
    /// Check the usage for this profile.
    #[arg(long, value_enum)]
    pub(crate) profile: Option<ProfileArg>,
    /// The DNS name it must be valid for.
    #[arg(long, conflicts_with = "ip")]
    pub(crate) dns: Option<String>,
    /// The IP address it must be valid for.
    #[arg(long)]
    pub(crate) ip: Option<IpAddr>,
    /// Check revocation against this CRL [default: the CA folder's, when
    /// its CA issued the certificate or is the anchor].
    #[arg(long, conflicts_with = "no_crl")]
    pub(crate) crl: Option<PathBuf>,
    /// Do not check revocation.
    #[arg(long)]
    pub(crate) no_crl: bool,
    /// The CA folder whose current CRL is checked by default.
    #[arg(long, default_value = layout::DEFAULT_CA_DIR)]
    pub(crate) ca_dir: PathBuf,
}

/// The arguments of `provision list`.
#[derive(Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    pub(crate) ca: CaArgs,
    /// Only certificates with this common name (the identity's name).
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// Only certificates not revoked.
    #[arg(long)]
    pub(crate) valid: bool,
}

/// The arguments of `provision revoke`.
#[derive(Args)]
pub(crate) struct RevokeArgs {
    /// The certificate to revoke.
    #[arg(required_unless_present_any = ["serial", "name"])]
    pub(crate) cert: Option<PathBuf>,
    /// The serial (hex) to revoke.
    #[arg(long, conflicts_with_all = ["cert", "name"], value_parser = parse::<Serial>)]
    pub(crate) serial: Option<Serial>,
    /// Every valid certificate of this identity (common name).
    #[arg(long, conflicts_with = "cert")]
    pub(crate) name: Option<String>,
    /// Why: unspecified, key-compromise, ca-compromise, affiliation-changed,
    /// superseded, cessation-of-operation, privilege-withdrawn. Every reason
    /// but unspecified and superseded revokes the certificates renewed from
    /// it too.
    #[arg(long, default_value = "unspecified", value_parser = parse::<RevocationReason>)]
    pub(crate) reason: RevocationReason,
    #[command(flatten)]
    pub(crate) ca: CaArgs,
    /// Days until the CRL's nextUpdate.
    #[arg(long, default_value_t = 30)]
    pub(crate) crl_days: u32,
}

/// The arguments of `provision crl`.
#[derive(Args)]
pub(crate) struct CrlArgs {
    #[command(flatten)]
    pub(crate) ca: CaArgs,
    /// Where to write it.
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    /// Days until the CRL's nextUpdate.
    #[arg(
        long,
        alias = "days",
        default_value_t = 30,
        conflicts_with = "crl_lifetime"
    )]
    pub(crate) crl_days: u32,
    /// Time until the CRL's nextUpdate with a unit: 30s, 15m, 12h, 7d.
    #[arg(long, alias = "lifetime", value_parser = parse_lifetime)]
    pub(crate) crl_lifetime: Option<std::time::Duration>,
    /// Sign a new CRL only when the current one is past half its lifetime
    /// (or missing): for a timer, so that the CRL never lapses.
    #[arg(long)]
    pub(crate) if_due: bool,
}

/// The arguments of `provision audit`.
#[derive(Args)]
pub(crate) struct AuditArgs {
    #[command(flatten)]
    pub(crate) ca: CaArgs,
    /// Report certificates (and the CA) ending within this many days.
    #[arg(long, default_value_t = 30)]
    pub(crate) days: u32,
}

/// The arguments of `provision fleet`.
#[derive(Args)]
pub(crate) struct FleetArgs {
    /// The manifest.
    pub(crate) manifest: PathBuf,
    /// Worker threads (default: one per core).
    #[arg(long, default_value_t = 0)]
    pub(crate) jobs: usize,
    /// Print what the run would issue, reissue (and why), keep or leave to
    /// a renewal made elsewhere; write, sign and revoke nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
    #[command(flatten)]
    pub(crate) inventory: InventoryArg,
}

/// The arguments of `provision broker-config`.
#[derive(Args)]
pub(crate) struct BrokerConfigArgs {
    /// The broker identity's name.
    #[arg(long, default_value = "broker")]
    pub(crate) server: String,
    /// Where the broker identity was issued.
    #[arg(long, default_value = layout::DEFAULT_IDENTITY_DIR)]
    pub(crate) certs_dir: PathBuf,
    #[command(flatten)]
    pub(crate) ca: CaArgs,
    /// Output folder.
    #[arg(long, default_value = layout::DEFAULT_BROKER_DIR)]
    pub(crate) out: PathBuf,
    /// TLS listener port.
    #[arg(long, default_value_t = 8883)]
    pub(crate) port: u16,
    /// Listen on this address only.
    #[arg(long)]
    pub(crate) bind: Option<String>,
    /// Replace existing files.
    #[arg(long)]
    pub(crate) force: bool,
    /// Also write a systemd service and hourly timer that keep the CRL
    /// from lapsing (`provision crl --if-due`), into the output folder.
    #[arg(long)]
    pub(crate) systemd: bool,
    /// The CRL lifetime the timer's `crl --if-due` signs (30s, 12h, 7d).
    #[arg(long, default_value = "7d", value_parser = parse_lifetime_text)]
    pub(crate) crl_lifetime: String,
    /// Also write enroll.conf: a second Mosquitto on this port where
    /// devices enroll with a claim certificate (provision serve).
    #[arg(long)]
    pub(crate) enroll_port: Option<u16>,
    /// The broker plugin to copy into the output folder and load
    /// (libmqtt_mtls_auth.so; default: the one beside this program).
    #[arg(long, value_name = "PATH", conflicts_with = "without_plugin")]
    pub(crate) plugin: Option<PathBuf>,
    /// Write Mosquitto's acl_file instead of loading the plugin, for a
    /// broker that cannot load it: SUBSCRIBE is then never checked (any
    /// identity can join a service's shared subscription), and the broker
    /// must be reloaded by hand after a revocation.
    #[arg(long)]
    pub(crate) without_plugin: bool,
    /// The largest packet the broker takes from a client, in bytes (a
    /// client sending a bigger one is disconnected; default: the fleet
    /// manifest's [[broker]] max_packet_size for --server, else 1 MiB).
    #[arg(long, value_name = "BYTES",
          value_parser = clap::value_parser!(u32).range(20..=268_435_455))]
    pub(crate) max_packet_size: Option<u32>,
}

/// The arguments of `provision pub`.
#[derive(Args)]
pub(crate) struct PubArgs {
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
    /// The message (default: read standard input).
    #[arg(long, short)]
    pub(crate) message: Option<String>,
    /// Ask the broker to retain it.
    #[arg(long)]
    pub(crate) retain: bool,
}

/// The arguments of `provision sub`.
#[derive(Args)]
pub(crate) struct SubArgs {
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
    /// Exit after this many messages.
    #[arg(long, short = 'C')]
    pub(crate) count: Option<usize>,
    /// Exit after this many seconds.
    #[arg(long, short = 'W')]
    pub(crate) timeout: Option<u64>,
}

#[derive(Subcommand)]
pub(crate) enum IssueCommand {
    /// A client (device or backend) certificate: EKU clientAuth.
    #[command(after_help = "Example:\n  provision issue client client1 --org MyOrg --country US")]
    Client(IssueArgs),
    /// A server (broker) certificate: EKU serverAuth; needs --dns or --ip.
    #[command(
        after_help = "Example:\n  provision issue server broker --dns mqtt.example.com --ip 10.0.0.5"
    )]
    Server(IssueArgs),
    /// A claim certificate (role claim), shared by devices leaving the
    /// factory: with it they may only ask `provision serve` to enroll the
    /// names its policy allows (--allow, --allow-file, --allow-pattern),
    /// at most --quota of them, until it expires.
    #[command(
        after_help = "Example:\n  provision issue claim factory-2026 --allow-pattern 'sensor-*' --quota 1000 --days 30\n  provision enroll sensor-7 --cert backend_certs/factory-2026_cert.pem \\\n    --key backend_certs/factory-2026.key --ca root_cert/root_ca_cert.pem --port 8884"
    )]
    Claim(ClaimArgs),
}

/// The arguments of `provision issue claim`.
#[derive(Args)]
pub(crate) struct ClaimArgs {
    /// The claim's name: its CN and MQTT username; NAME.key, NAME_cert.pem.
    pub(crate) name: String,
    #[command(flatten)]
    pub(crate) ca: CaArgs,
    /// Output folder.
    #[arg(long, default_value = layout::DEFAULT_IDENTITY_DIR)]
    pub(crate) out: PathBuf,
    #[command(flatten)]
    pub(crate) subject: SubjectArgs,
    /// Key type.
    #[arg(long, default_value = "p256", value_parser = parse::<KeyType>)]
    pub(crate) key_type: KeyType,
    /// Validity in days: the claim's policy ends with it.
    #[arg(long, default_value_t = 30)]
    pub(crate) days: u32,
    /// A device name it may enroll (repeatable).
    #[arg(long = "allow", value_name = "NAME")]
    pub(crate) allow: Vec<String>,
    /// A file of device names it may enroll, one per line (from
    /// manufacturing, say).
    #[arg(long, value_name = "FILE")]
    pub(crate) allow_file: Option<PathBuf>,
    /// Device names it may enroll: `*` stands for any run of characters.
    #[arg(long, value_name = "PATTERN")]
    pub(crate) allow_pattern: Option<String>,
    /// How many devices it may enroll in all.
    #[arg(long)]
    pub(crate) quota: Option<u64>,
    /// Replace existing files.
    #[arg(long)]
    pub(crate) force: bool,
}

/// The arguments of `provision serve`.
#[derive(Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    pub(crate) authority: CaArgs,
    /// The service's own certificate (issued with --role ca-service).
    #[arg(long)]
    pub(crate) cert: PathBuf,
    /// Its key: a PEM file, a key file recording a PKCS#11 URI, or a
    /// `pkcs11:` URI.
    #[arg(long)]
    pub(crate) key: PathBuf,
    /// The CA certificate the brokers' certificates are checked against.
    #[arg(long)]
    pub(crate) ca: PathBuf,
    /// The environment variable holding the service key's passphrase.
    #[arg(long, value_name = "VAR")]
    pub(crate) key_passphrase_env: Option<String>,
    /// The environment variable holding the PIN of the token the service
    /// key is in (--key a `pkcs11:` URI or a key file recording one).
    #[arg(long, value_name = "VAR")]
    pub(crate) key_pin_env: Option<String>,
    /// The main broker's host: renewals.
    #[arg(long, short = 'H', default_value = "localhost")]
    pub(crate) host: String,
    /// The main broker's port.
    #[arg(long, short, default_value_t = 8883)]
    pub(crate) port: u16,
    /// The enrollment broker's port (broker-config --enroll-port): also
    /// serve enrollments.
    #[arg(long)]
    pub(crate) enroll_port: Option<u16>,
    /// The enrollment broker's host (default: --host).
    #[arg(long)]
    pub(crate) enroll_host: Option<String>,
    /// The shared subscription's group: instances in one group share the
    /// requests.
    #[arg(long, default_value = "pki")]
    pub(crate) share_group: String,
    /// Validity of an enrolled or renewed certificate, in days (capped at
    /// the CA's own end).
    #[arg(long, default_value_t = 365)]
    pub(crate) days: u32,
    /// How long a renewed device has to confirm before its old
    /// certificate is revoked anyway (30s, 1h, 7d).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub(crate) grace: std::time::Duration,
    /// Stop within this many seconds of SIGTERM, whatever the CA store
    /// does (exit 1 if the worker had not stopped by then; requests not
    /// answered stay with the broker).
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub(crate) shutdown_timeout: u64,
    /// Serve /healthz and /metrics here (plain HTTP: keep it on loopback).
    #[arg(long, alias = "http", value_name = "ADDR:PORT")]
    pub(crate) listen: Option<std::net::SocketAddr>,
}

/// The arguments of `provision enroll`.
#[derive(Args)]
pub(crate) struct EnrollArgs {
    /// The device name to enroll (its CN; NAME.key, NAME_cert.pem).
    pub(crate) name: String,
    /// The claim identity (--cert, --key, --ca of the claim).
    #[command(flatten)]
    pub(crate) claim: IdentityArgs,
    /// The enrollment broker's host.
    #[arg(long, short = 'H', default_value = "localhost")]
    pub(crate) host: String,
    /// The enrollment broker's port.
    #[arg(long, short, default_value_t = 8884)]
    pub(crate) port: u16,
    /// Where to write the new identity.
    #[arg(long, default_value = layout::DEFAULT_IDENTITY_DIR)]
    pub(crate) out: PathBuf,
    /// The new key's type.
    #[arg(long, default_value = "p256", value_parser = parse::<KeyType>)]
    pub(crate) key_type: KeyType,
    /// Seconds to wait for the CA service's answer.
    #[arg(long, default_value_t = 30)]
    pub(crate) timeout: u64,
    /// Replace existing files.
    #[arg(long)]
    pub(crate) force: bool,
    /// Make the new key inside a PKCS#11 token (an HSM, a TPM through
    /// tpm2-pkcs11, SoftHSM2), named by an RFC 7512 URI such as
    /// `pkcs11:token=devices`: sensitive, never extractable, labelled NAME
    /// unless the URI gives `object=`. NAME.key then records the URI.
    #[arg(long, value_name = "URI")]
    pub(crate) key_uri: Option<String>,
    /// With --key-uri: the environment variable holding that token's PIN
    /// (recorded by name in NAME.key). The claim's own key takes --pin-env.
    #[arg(long, value_name = "VAR", requires = "key_uri")]
    pub(crate) key_pin_env: Option<String>,
}

/// The arguments of `provision renew`.
#[derive(Args)]
pub(crate) struct RenewArgs {
    /// The current identity, renewed in place (its files replaced).
    #[command(flatten)]
    pub(crate) identity: IdentityArgs,
    /// The broker's host.
    #[arg(long, short = 'H', default_value = "localhost")]
    pub(crate) host: String,
    /// The broker's port.
    #[arg(long, short, default_value_t = 8883)]
    pub(crate) port: u16,
    /// Seconds to wait for the CA service's answer.
    #[arg(long, default_value_t = 30)]
    pub(crate) timeout: u64,
}

#[derive(Args)]
pub(crate) struct IssueArgs {
    /// File-name stem: NAME.key, NAME_csr.pem, NAME_cert.pem; the default CN.
    pub(crate) name: String,
    #[command(flatten)]
    pub(crate) ca: CaArgs,
    /// Output folder.
    #[arg(long, default_value = layout::DEFAULT_IDENTITY_DIR)]
    pub(crate) out: PathBuf,
    #[command(flatten)]
    pub(crate) subject: SubjectArgs,
    /// Key type.
    #[arg(long, default_value = "p256", value_parser = parse::<KeyType>)]
    pub(crate) key_type: KeyType,
    /// Validity in days (capped at the CA's expiry).
    #[arg(long, default_value_t = 365)]
    pub(crate) days: u32,
    #[command(flatten)]
    pub(crate) names: NameArgs,
    /// Replace existing files.
    #[arg(long)]
    pub(crate) force: bool,
    /// A client's role, carried in its certificate: device (its own
    /// topics), service (reads every device) or reader (the ingest's HTTPS
    /// API). Ignored for a server.
    #[arg(long, default_value = "device", value_parser = parse_role)]
    pub(crate) role: Role,
}

#[derive(Args)]
pub(crate) struct CaArgs {
    /// The CA folder.
    #[arg(long, default_value = layout::DEFAULT_CA_DIR)]
    pub(crate) ca_dir: PathBuf,
    /// The environment variable holding the CA key's passphrase.
    #[arg(long, value_name = "VAR")]
    pub(crate) passphrase_env: Option<String>,
    #[command(flatten)]
    pub(crate) inventory: InventoryArg,
}

/// Where the inventory is, when not in the CA folder.
#[derive(Args)]
pub(crate) struct InventoryArg {
    /// The inventory in PostgreSQL (postgres://USER@HOST/DB) instead of
    /// SQLite in the CA folder (keep the password in PGPASSWORD or
    /// ~/.pgpass).
    #[arg(
        long = "inventory",
        value_name = "URL",
        env = "PROVISION_INVENTORY",
        hide_env_values = true
    )]
    pub(crate) url: Option<String>,
    /// Allow a link to a remote PostgreSQL that is not verified TLS (an
    /// sslmode other than verify-full or verify-ca): for a network you
    /// trust.
    #[arg(long, env = "PROVISION_INSECURE_DB")]
    pub(crate) insecure_db: bool,
}

#[derive(Args)]
pub(crate) struct SubjectArgs {
    /// Common name (default: the name).
    #[arg(long)]
    pub(crate) cn: Option<String>,
    /// Organization.
    #[arg(long)]
    pub(crate) org: Option<String>,
    /// Two-letter country code.
    #[arg(long)]
    pub(crate) country: Option<String>,
}

#[derive(Args)]
pub(crate) struct NameArgs {
    /// DNS subject alternative name (repeatable).
    #[arg(long, value_parser = parse::<DnsName>)]
    pub(crate) dns: Vec<DnsName>,
    /// IP subject alternative name (repeatable).
    #[arg(long)]
    pub(crate) ip: Vec<IpAddr>,
}

/// A client identity: three files, or a bundle file naming them.
#[derive(Args)]
pub(crate) struct IdentityArgs {
    /// Client certificate.
    #[arg(long, requires_all = ["key", "ca"], conflicts_with = "bundle")]
    pub(crate) cert: Option<PathBuf>,
    /// Client key: a PEM file, a key file recording a PKCS#11 URI
    /// (`csr --key-uri`), or a `pkcs11:` URI.
    #[arg(long)]
    pub(crate) key: Option<PathBuf>,
    /// CA certificate.
    #[arg(long)]
    pub(crate) ca: Option<PathBuf>,
    /// A TOML file with a [tls] table (cert_path, key_path, ca_cert_path).
    #[arg(long)]
    pub(crate) bundle: Option<PathBuf>,
    /// The environment variable holding the client key's passphrase (for
    /// an encrypted key; a bundle file says it with `passphrase_env`).
    #[arg(
        long,
        alias = "passphrase-env",
        value_name = "VAR",
        conflicts_with = "bundle"
    )]
    pub(crate) key_passphrase_env: Option<String>,
    /// The environment variable holding the PIN of the token the client
    /// key is in (over one recorded in the key file; a bundle file says it
    /// with `pin_env`).
    #[arg(long, value_name = "VAR", conflicts_with = "bundle")]
    pub(crate) pin_env: Option<String>,
}

#[derive(Args)]
pub(crate) struct ConnArgs {
    #[command(flatten)]
    pub(crate) identity: IdentityArgs,
    /// Broker host (DNS name or IP address).
    #[arg(long, short = 'H', default_value = "localhost")]
    pub(crate) host: String,
    /// Broker port.
    #[arg(long, short, default_value_t = 8883)]
    pub(crate) port: u16,
    /// Topic (a filter for sub).
    #[arg(long, short)]
    pub(crate) topic: String,
    /// QoS 0, 1 or 2.
    #[arg(long, short, default_value = "1")]
    pub(crate) qos: QoS,
    /// Client id (default: provision-<pid>). The main broker from
    /// `provision broker-config` uses the certificate's name instead (one
    /// connection per identity); its enrollment broker honours it.
    #[arg(long, short = 'i')]
    pub(crate) client_id: Option<String>,
    /// The largest MQTT packet to send (pub refuses a bigger message
    /// before any of it is sent) and to accept, in bytes (default: send up
    /// to 1 MiB, accept anything MQTT allows).
    #[arg(long, value_name = "BYTES")]
    pub(crate) max_packet_size: Option<usize>,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum ProfileArg {
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

fn parse_lifetime(s: &str) -> Result<std::time::Duration, String> {
    let d =
        humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (e.g. 30s, 15m, 12h, 7d)"))?;
    if d < std::time::Duration::from_secs(1) {
        return Err(format!("{s:?}: a CRL lives at least a second"));
    }
    Ok(d)
}

fn parse_lifetime_text(s: &str) -> Result<String, String> {
    parse_lifetime(s).map(|_| s.to_owned())
}

fn parse_role(s: &str) -> Result<Role, String> {
    match s.parse().map_err(|e: provision::Error| e.to_string())? {
        Role::Claim => {
            Err("a claim comes with its policy: `provision issue claim NAME --allow ...`".into())
        }
        role => Ok(role),
    }
}

/// A typed value from its text, for clap (`KeyType`, `DnsName`, `Serial`,
/// `RevocationReason`).
fn parse<T: std::str::FromStr<Err = pki_core::Error>>(s: &str) -> Result<T, String> {
    s.parse().map_err(|e: pki_core::Error| e.to_string())
}

impl SubjectArgs {
    pub(crate) fn options(&self) -> SubjectOptions {
        SubjectOptions {
            common_name: self.cn.clone(),
            organization: self.org.clone(),
            country: self.country.clone(),
        }
    }
}

impl CaArgs {
    pub(crate) fn dir(&self) -> CaDir {
        CaDir::new(&self.ca_dir)
            .with_inventory_url(self.inventory.url.clone())
            .with_insecure_db(self.inventory.insecure_db)
    }

    pub(crate) fn passphrase(&self) -> anyhow::Result<Option<Zeroizing<Vec<u8>>>> {
        passphrase(self.passphrase_env.as_deref())
    }

    /// Loads the CA; an encrypted key without `--passphrase-env` is
    /// unlocked with a passphrase typed at the terminal, when there is one.
    pub(crate) fn load(&self) -> anyhow::Result<(CaDir, pki_core::CertificateAuthority)> {
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
pub(crate) fn new_passphrase(key: &Path) -> anyhow::Result<Zeroizing<Vec<u8>>> {
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

/// The passphrase in the variable `var`, when one is named (unset or
/// empty refused: `safe_files`' one policy).
pub(crate) fn passphrase(var: Option<&str>) -> anyhow::Result<Option<Zeroizing<Vec<u8>>>> {
    Ok(var.map(safe_files::passphrase_from_env).transpose()?)
}

impl IdentityArgs {
    /// The files, checked.
    pub(crate) fn load(&self) -> anyhow::Result<mqtt_tls::TlsIdentity> {
        Ok(self.files()?.load()?)
    }

    /// The files.
    pub(crate) fn files(&self) -> anyhow::Result<ClientCert> {
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
                passphrase_env: self.key_passphrase_env.clone(),
                pin_env: self.pin_env.clone(),
                ..ClientCert::new(cert, key, ca)
            },
            _ => bail!("give --cert, --key and --ca, or --bundle FILE.toml"),
        };
        Ok(bundle)
    }
}

impl ConnArgs {
    pub(crate) fn identity(&self) -> anyhow::Result<mqtt_tls::TlsIdentity> {
        self.identity.load()
    }

    pub(crate) fn endpoint(&self) -> Endpoint {
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
}
