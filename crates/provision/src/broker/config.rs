//! `provision broker-config`: a Mosquitto configuration for mutual TLS,
//! the plugin that enforces identities, and the broker's files.

use std::path::{Path, PathBuf};

use pki_core::{Certificate, KeyPair, Profile, VerifyOptions};

use super::rules::write_rules;
use crate::error::{Error, Result};
use crate::files::{Access, check_name, read_text, write_atomic, write_atomic_owned};
use crate::inventory::LockedCa;
use crate::layout::{BrokerPaths, IdentityPaths, PLUGIN_FILE};

/// What to generate.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// The broker identity's name (`NAME_cert.pem`, `NAME.key`).
    pub server: String,
    /// Where the broker identity was issued (default `backend_certs`).
    pub certs_dir: PathBuf,
    /// Where to write `mosquitto.conf` and the files it uses.
    pub out: PathBuf,
    /// The TLS listener's port.
    pub port: u16,
    /// Listen on this address only (default: all).
    pub bind: Option<String>,
    /// Also write `enroll.conf`: a second Mosquitto, on this port, where
    /// devices holding a claim certificate enroll (`provision serve`).
    pub enroll_port: Option<u16>,
    /// Replace existing files.
    pub force: bool,
    /// How the broker enforces each identity's rules.
    pub enforcement: Enforcement,
    /// The largest packet the main broker takes from a client (Mosquitto's
    /// `max_packet_size`): a client sending a bigger one is disconnected,
    /// so no device can push a message larger than this to the services
    /// behind the broker. `None`: what a fleet manifest's `[[broker]]` of
    /// this name set, else [`DEFAULT_MAX_PACKET_SIZE`].
    pub max_packet_size: Option<u32>,
}

/// [`BrokerConfig::max_packet_size`]'s default: 1 MiB, the outgoing limit
/// of our clients.
pub const DEFAULT_MAX_PACKET_SIZE: u32 = 1024 * 1024;

/// The `max_packet_size` values Mosquitto takes.
pub const MAX_PACKET_SIZE_RANGE: std::ops::RangeInclusive<u32> = 20..=268_435_455;

/// How a broker enforces each identity's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enforcement {
    /// Our Mosquitto plugin (this `.so`, copied into the broker folder):
    /// PUBLISH, deliveries and SUBSCRIBE (shared groups included) checked
    /// from the client certificate, revoked connections taken off within a
    /// second, the broker reloaded when its CRL changes.
    Plugin(PathBuf),
    /// Mosquitto's own `acl_file`, for a broker that cannot load the
    /// plugin: it never checks SUBSCRIBE (any identity may join a
    /// service's shared subscription and take its messages), and the
    /// broker must be reloaded by hand (SIGHUP) after a revocation, and
    /// restarted to end a revoked device's live connection. `provision
    /// audit` reports such a folder.
    AclFileOnly,
}

/// Where the broker plugin is when `broker-config` is not told
/// (`--plugin`): beside this program, in cargo's `deps/` folder beside it
/// (where every build of `provision` puts it), or in
/// `/usr/lib/mqtt-mtls/`; the most recently built of those there, so that
/// an old copy never shadows the plugin built with this program.
pub fn default_plugin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [
        dir.join(PLUGIN_FILE),
        dir.join("deps").join(PLUGIN_FILE),
        Path::new("/usr/lib/mqtt-mtls").join(PLUGIN_FILE),
    ]
    .into_iter()
    .filter_map(|p| {
        let modified = std::fs::metadata(&p)
            .ok()
            .filter(std::fs::Metadata::is_file)?
            .modified()
            .ok()?;
        Some((modified, p))
    })
    .max_by_key(|(modified, _)| *modified)
    .map(|(_, p)| p)
}

/// Reads the plugin to copy, refusing what is not a shared object.
fn read_plugin(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        action: "reading the broker plugin",
        path: path.to_owned(),
        source,
    })?;
    if !bytes.starts_with(b"\x7fELF") {
        return Err(Error::Plugin {
            path: path.to_owned(),
            reason: "not the broker plugin (an ELF shared object such as libmqtt_mtls_auth.so)"
                .into(),
        });
    }
    Ok(bytes)
}

/// The folder and files written.
#[derive(Debug, Clone)]
pub struct BrokerFiles {
    /// The files (`mosquitto.conf` and what it names).
    pub paths: BrokerPaths,
    /// Whether a CRL was included.
    pub crl: bool,
    /// Whether the broker loads the plugin (else its `acl_file`).
    pub plugin: bool,
}

/// Writes `OUT/mosquitto.conf` with copies of the CA certificate (the
/// root: the trust anchor, also under an intermediate), the broker's
/// certificate file (with the intermediate after it, when one signed it)
/// and key, the CRL (the signing CA's: a client is checked against its
/// issuer's CRL) (an empty one signed now when the
/// CA has none yet) and the topic rules (`acl`), readable by the user
/// Mosquitto drops to when started as root; the folder is remembered in
/// the inventory, so that `revoke` and `issue` keep its CRL and rules in
/// step ([`super::apply`]). The caller commits `locked`.
pub fn write(locked: &mut LockedCa<'_>, config: &BrokerConfig) -> Result<BrokerFiles> {
    let ca_dir = locked.ca_dir().clone();
    check_name(&config.server)?;
    let source = IdentityPaths::new(&config.certs_dir, &config.server);
    let (cert_src, key_src) = (source.cert, source.key);
    let ca = read_text(&ca_dir.cert_path())?;
    let cert = read_text(&cert_src)?;
    // The broker's private key: wiped from memory when dropped.
    let key = zeroize::Zeroizing::new(read_text(&key_src)?);
    check_server_identity(&ca_dir.cert_path(), &cert_src, &key_src, &ca, &cert, &key)?;
    // Always a CRL: a broker configured before the first revocation must
    // still pick up the later ones.
    let crl = match std::fs::read_to_string(ca_dir.crl_path()) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => locked
            .write_crl(&ca_dir.crl_path(), FIRST_CRL_DAYS)?
            .to_pem(),
        Err(source) => {
            return Err(Error::Io {
                action: "reading",
                path: ca_dir.crl_path(),
                source,
            });
        }
    };
    let policy = locked.acl_policy()?;
    let max_packet_size = match config.max_packet_size {
        Some(bytes) => bytes,
        None => locked
            .broker_max_packet_size(&config.server)?
            .unwrap_or(DEFAULT_MAX_PACKET_SIZE),
    };
    let plugin = match &config.enforcement {
        Enforcement::Plugin(path) => Some(read_plugin(path)?),
        Enforcement::AclFileOnly => None,
    };

    let paths = BrokerPaths::new(&absolute(&config.out)?);
    let BrokerPaths {
        config: conf_path,
        ca: ca_path,
        cert: cert_path,
        key: key_path,
        crl: crl_path,
        ..
    } = paths.clone();
    crate::files::refuse_existing(&[&conf_path, &key_path, &cert_path], config.force)?;

    write_atomic(&ca_path, ca.as_bytes(), Access::Public, config.force)?;
    write_atomic(&cert_path, cert.as_bytes(), Access::Public, config.force)?;
    // Mosquitto started as root reads its key after dropping to its own
    // user: the key is made theirs on its open handle, before it has a name.
    write_atomic_owned(
        &key_path,
        key.as_bytes(),
        Access::Secret,
        config.force,
        broker_user(),
    )?;
    write_atomic(&crl_path, crl.as_bytes(), Access::Public, true)?;
    // The broker loads the plugin after dropping to its user: 0644.
    if let Some(plugin) = &plugin {
        write_atomic(&paths.plugin, plugin, Access::Public, true)?;
    }
    write_rules(
        &locked.non_device_identities()?,
        &policy,
        &paths,
        plugin.is_some(),
        config.enroll_port.is_some(),
    )?;

    let listener = |port: u16| match &config.bind {
        Some(addr) => format!("listener {port} {addr}"),
        None => format!("listener {port}"),
    };
    let enforcement = |rules: &Path, acl: &Path| match &plugin {
        Some(_) => format!(
            "# Who may do what: the broker plugin checks every PUBLISH, delivery and\n\
             # SUBSCRIBE (shared subscriptions' groups included) against the rules of\n\
             # the client certificate's role, takes revoked certificates' connections\n\
             # off and reloads this broker when the CRL changes. It needs\n\
             # per_listener_settings false (above).\n\
             plugin {plugin}\n\
             plugin_opt_rules {rules}\n\
             plugin_opt_crl {crl}\n",
            plugin = paths.plugin.display(),
            rules = rules.display(),
            crl = crl_path.display(),
        ),
        None => format!(
            "# Who may do what: Mosquitto's acl_file (written without the broker\n\
             # plugin: SUBSCRIBE is never checked, and after `provision revoke` this\n\
             # broker must be reloaded with SIGHUP; `provision audit` reports it).\n\
             acl_file {acl}\n",
            acl = acl.display(),
        ),
    };
    let mut text = format!(
        "# Generated by `provision broker-config`: Mosquitto 2.x with mutual TLS.\n\
         per_listener_settings false\n\
         {listener}\n\
         cafile {ca}\n\
         certfile {cert}\n\
         keyfile {key}\n\
         # Clients must present a certificate from our CA; its CN is their username.\n\
         require_certificate true\n\
         use_identity_as_username true\n\
         # The client id is the username too: a device cannot take over (and\n\
         # knock off) another device's session by using its client id.\n\
         use_username_as_clientid true\n\
         {enforcement}\
         # Revoked client certificates are refused at the handshake.\n\
         crlfile {crl}\n\
         # Without this every TLS connection waits ~40 ms for delayed ACKs.\n\
         set_tcp_nodelay true\n\
         # The default (1000) silently drops QoS 1 messages for persistent\n\
         # sessions during a flood.\n\
         max_queued_messages 100000\n\
         # A client sending a larger packet is disconnected: no device pushes\n\
         # a message bigger than this to the services behind the broker.\n\
         max_packet_size {max_packet_size}\n",
        max_packet_size = max_packet_size,
        listener = listener(config.port),
        ca = ca_path.display(),
        cert = cert_path.display(),
        key = key_path.display(),
        enforcement = enforcement(&paths.rules, &paths.acl),
        crl = crl_path.display(),
    );
    text.push_str(
        "# For persistent sessions that survive a restart, add:\n\
         # persistence true\n\
         # persistence_location /var/lib/mosquitto/\n",
    );
    write_atomic(&conf_path, text.as_bytes(), Access::Public, config.force)?;
    if let Some(port) = config.enroll_port {
        let text = format!(
            "# Generated by `provision broker-config`: the enrollment broker, a second\n\
             # Mosquitto where devices holding a claim certificate ask the CA service\n\
             # (`provision serve`) for their own identity. A separate process: claim\n\
             # clients choose their client ids (many devices share one claim), and\n\
             # client ids are global to a Mosquitto, so on the main broker a claim\n\
             # could take over a device's session.\n\
             per_listener_settings false\n\
             {listener}\n\
             cafile {ca}\n\
             certfile {cert}\n\
             keyfile {key}\n\
             require_certificate true\n\
             use_identity_as_username true\n\
             # Only claims and the CA service have rules here.\n\
             {enforcement}\
             crlfile {crl}\n\
             set_tcp_nodelay true\n\
             max_queued_messages 100000\n\
             # A request is a CSR: nothing bigger is taken.\n\
             max_packet_size 65536\n",
            listener = listener(port),
            ca = ca_path.display(),
            cert = cert_path.display(),
            key = key_path.display(),
            enforcement = enforcement(&paths.enroll_rules, &paths.enroll_acl),
            crl = crl_path.display(),
        );
        write_atomic(
            &paths.enroll_config,
            text.as_bytes(),
            Access::Public,
            config.force,
        )?;
    }
    locked.add_broker_dir(&paths.config)?;
    Ok(BrokerFiles {
        paths,
        crl: true,
        plugin: plugin.is_some(),
    })
}

/// Days of the first CRL `broker-config` signs when the CA has none.
const FIRST_CRL_DAYS: u32 = 30;

pub(super) fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|source| Error::Io {
        action: "resolving",
        path: path.to_owned(),
        source,
    })
}

/// Mosquitto started as root drops to the `mosquitto` user before it
/// loads the key: when we are root and that user exists, its uid (the key's
/// owner then).
fn broker_user() -> Option<u32> {
    if !rustix::process::geteuid().is_root() {
        return None;
    }
    let user = nix::unistd::User::from_name("mosquitto").ok()??;
    Some(user.uid.as_raw())
}

/// Refuses what Mosquitto would load but no client could use: a
/// certificate that is not a valid server certificate from this CA today
/// (directly, or through the intermediate after it in its file), or a key
/// that is not its key (Mosquitto only says "unable to load").
fn check_server_identity(
    ca_path: &Path,
    cert_path: &Path,
    key_path: &Path,
    ca: &str,
    cert: &str,
    key: &str,
) -> Result<()> {
    let pki = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Pki { path, source }
    };
    let cas = Certificate::all_from_pem(ca).map_err(pki(ca_path))?;
    let mut chain = Certificate::all_from_pem(cert).map_err(pki(cert_path))?;
    let certificate = chain.remove(0);
    let options = VerifyOptions {
        profile: Some(Profile::Server),
        // The CA folder's own certificate, root or intermediate.
        partial_chain: true,
        ..VerifyOptions::now()
    };
    crate::inspect::verify_chain(&certificate, &chain, &cas, &options).map_err(pki(cert_path))?;
    let key_pair = KeyPair::from_pem(key).map_err(pki(key_path))?;
    let spki = certificate.public_key_der().map_err(pki(cert_path))?;
    if !key_pair.matches_public_key(&spki) {
        return Err(Error::Pki {
            path: key_path.to_owned(),
            source: pki_core::Error::KeyMismatch {
                subject: certificate.subject(),
            },
        });
    }
    Ok(())
}
