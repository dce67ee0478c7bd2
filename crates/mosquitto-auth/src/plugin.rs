//! The plugin's state and decisions, with the broker behind a trait: the
//! FFI module (`crates/mosquitto-plugin`) turns Mosquitto's callbacks into
//! calls of [`Plugin::acl_check`], [`Plugin::disconnect`] and
//! [`Plugin::tick`], and implements [`Broker`] with Mosquitto's functions.
//! Everything here is tested without a broker.
//!
//! Mosquitto 2.0.11 calls every callback on its one main thread. What the
//! plugin learns of a client comes from its ACL checks (2.0.11 has no
//! connect event for certificate clients): at its first check, the client
//! certificate is read and parsed once, and kept until the client
//! disconnects. A persistent session outlives its socket: deliveries
//! queued for it while it is offline, and its Last Will after the socket
//! closed, are checked without a certificate, so the identity is also kept
//! by client id.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::identity::Identity;
use crate::revoked::Revoked;
use crate::rules::{Grant, Request, Rules};

/// A client as the broker knows it: the address of its `struct
/// mosquitto`, stable for the life of the connection (and of an offline
/// session).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(pub usize);

/// A log line's level (Mosquitto's `MOSQ_LOG_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// `MOSQ_LOG_INFO`.
    Info,
    /// `MOSQ_LOG_NOTICE`.
    Notice,
    /// `MOSQ_LOG_WARNING`.
    Warning,
    /// `MOSQ_LOG_ERR`.
    Error,
    /// `MOSQ_LOG_DEBUG`.
    Debug,
}

/// What the plugin asks of the broker.
pub trait Broker {
    /// The client's certificate (DER), or `None`: no certificate, or the
    /// socket is closed.
    fn certificate(&self, client: ClientKey) -> Option<Vec<u8>>;
    /// The client's id.
    fn client_id(&self, client: ClientKey) -> Option<String>;
    /// The client's username (the certificate's CN on our listeners).
    fn username(&self, client: ClientKey) -> Option<String>;
    /// Whether the client connected with MQTT 3.1/3.1.1 and a clean
    /// session: its session ends with its connection.
    fn ends_with_connection(&self, client: ClientKey) -> bool;
    /// Makes the broker reload its configuration (and so its `crlfile`):
    /// the plugin runs inside the broker, so it signals its own process.
    fn reload(&self);
    /// Writes a line to the broker's log.
    fn log(&self, level: Level, message: &str);
}

/// What the ACL check asks: Mosquitto's `MOSQ_ACL_*` with the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `MOSQ_ACL_READ`: a delivery to the client.
    Read,
    /// `MOSQ_ACL_WRITE`: a publish by the client (or its Last Will).
    Write,
    /// `MOSQ_ACL_SUBSCRIBE`.
    Subscribe,
    /// `MOSQ_ACL_UNSUBSCRIBE`.
    Unsubscribe,
}

impl Access {
    /// From Mosquitto's `access` field; `None` for a value 2.0.11 never
    /// sends.
    pub fn from_mosquitto(access: i32) -> Option<Self> {
        match access {
            1 => Some(Self::Read),
            2 => Some(Self::Write),
            4 => Some(Self::Subscribe),
            8 => Some(Self::Unsubscribe),
            _ => None,
        }
    }
}

/// The plugin's options (`plugin_opt_NAME VALUE` lines in
/// `mosquitto.conf`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// `plugin_opt_rules`: the rules file.
    pub rules: PathBuf,
    /// `plugin_opt_crl`: the CRL file (the broker's `crlfile`).
    pub crl: PathBuf,
    /// `plugin_opt_max_offline_identities` (default 200,000): how many
    /// identities of disconnected clients are kept for their offline
    /// sessions (past it the oldest go: their queued deliveries are then
    /// checked again when they reconnect).
    pub max_offline: usize,
}

impl Options {
    /// Reads the options; `rules` and `crl` are required, an unknown one
    /// is refused.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self> {
        let (mut rules, mut crl, mut max_offline) = (None, None, 200_000);
        for (key, value) in pairs {
            match key {
                "rules" => rules = Some(PathBuf::from(value)),
                "crl" => crl = Some(PathBuf::from(value)),
                "max_offline_identities" => {
                    max_offline = value.parse().map_err(|_| Error::Option {
                        option: "plugin_opt_max_offline_identities".into(),
                        reason: format!("{value:?} is not a number"),
                    })?;
                }
                other => {
                    return Err(Error::Option {
                        option: format!("plugin_opt_{other}"),
                        reason: "unknown option (known: rules, crl, max_offline_identities)".into(),
                    });
                }
            }
        }
        let missing = |name: &str| Error::Option {
            option: format!("plugin_opt_{name}"),
            reason: "missing: the plugin needs its rules file and the broker's CRL file".into(),
        };
        Ok(Self {
            rules: rules.ok_or_else(|| missing("rules"))?,
            crl: crl.ok_or_else(|| missing("crl"))?,
            max_offline,
        })
    }
}

/// How often the files are looked at (every broker tick, at most this
/// often; Mosquitto ticks about ten times a second).
const POLL: Duration = Duration::from_millis(100);

/// What identifies a version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

/// A file read and parsed, or why it could not be (then everything is
/// refused).
#[derive(Debug)]
struct Loaded<T> {
    stamp: Option<Stamp>,
    value: std::result::Result<Arc<T>, String>,
}

/// Files are small text; the CRL of a large fleet is tens of MB.
fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })
}

fn load_rules(path: &Path) -> Loaded<Rules> {
    let stamp = stamp(path);
    let value = read(path)
        .and_then(|text| Rules::parse(&text, path))
        .map(Arc::new)
        .map_err(|e| e.to_string());
    Loaded { stamp, value }
}

/// A digest of the CRL's text (whether it changed: a large CRL's text is
/// not kept) and what it lists.
type CrlRead = (Option<Stamp>, std::result::Result<(u64, Revoked), String>);

fn load_crl(path: &Path) -> CrlRead {
    let stamp = stamp(path);
    let value = read(path)
        .and_then(|text| {
            let revoked = Revoked::from_pem(&text, path)?;
            let mut digest = std::collections::hash_map::DefaultHasher::new();
            std::hash::Hash::hash(&text, &mut digest);
            Ok((std::hash::Hasher::finish(&digest), revoked))
        })
        .map_err(|e| e.to_string());
    (stamp, value)
}

/// One connection (or offline session) as the plugin knows it.
#[derive(Debug, Clone)]
struct Conn {
    client_id: Option<String>,
    identity: Arc<Identity>,
    grant: Arc<Grant>,
    generation: u64,
    /// Which offline entry this is (an address is reused: the order and
    /// the sessions to forget name the entry, not only the address).
    seq: u64,
}

/// The plugin: its files, what it knows of each client, and what it must
/// still do at the next tick.
#[derive(Debug)]
pub struct Plugin {
    options: Options,
    rules: Loaded<Rules>,
    /// Bumped whenever the rules change, so each connection's grant is
    /// made again.
    generation: u64,
    revoked: Loaded<Revoked>,
    /// The digest of the CRL the broker last loaded (at start, or at the
    /// reload this plugin asked for).
    crl_digest: Option<u64>,
    crl_job: Option<Receiver<CrlRead>>,
    live: HashMap<ClientKey, Conn>,
    /// Disconnected clients whose session the broker may keep: the
    /// identity their deliveries and Last Will are checked with, by the
    /// `struct mosquitto` the session stays in.
    offline: HashMap<ClientKey, Conn>,
    /// Where each client id's offline session is, to forget it when the id
    /// connects again (the broker moves the session to the new client).
    offline_by_id: HashMap<String, ClientKey>,
    /// The order offline entries came in: the oldest go first past
    /// `max_offline`.
    offline_order: VecDeque<(ClientKey, u64)>,
    /// Clean 3.1.1 sessions that ended: forgotten at the next tick (after
    /// their Last Will was checked).
    ended: Vec<(ClientKey, u64)>,
    /// The next offline entry's `seq`.
    next_seq: u64,
    kicks: BTreeSet<String>,
    last_poll: Option<Instant>,
    /// When the broker last ticked (or the plugin started): without ticks
    /// (`per_listener_settings true`) nothing is read again or kicked.
    last_tick: Instant,
    no_tick_reported: bool,
    /// Refused SUBSCRIBEs logged since the last poll, and those not logged.
    denials_logged: u32,
    denials_suppressed: u32,
}

/// Refused SUBSCRIBEs logged in one poll interval; the rest are counted.
const DENIALS_PER_POLL: u32 = 10;

impl Plugin {
    /// Reads both files. One that cannot be read does not stop the broker:
    /// the plugin refuses everything and says why in the log, until the
    /// file is readable.
    pub fn new(options: Options, broker: &impl Broker) -> Self {
        let rules = load_rules(&options.rules);
        let (stamp, crl) = load_crl(&options.crl);
        let (revoked, crl_digest) = match crl {
            Ok((digest, revoked)) => (
                Loaded {
                    stamp,
                    value: Ok(Arc::new(revoked)),
                },
                Some(digest),
            ),
            Err(e) => (
                Loaded {
                    stamp,
                    value: Err(e),
                },
                None,
            ),
        };
        let plugin = Self {
            options,
            rules,
            generation: 0,
            revoked,
            crl_digest,
            crl_job: None,
            live: HashMap::new(),
            offline: HashMap::new(),
            offline_by_id: HashMap::new(),
            offline_order: VecDeque::new(),
            ended: Vec::new(),
            next_seq: 0,
            kicks: BTreeSet::new(),
            last_poll: None,
            last_tick: Instant::now(),
            no_tick_reported: false,
            denials_logged: 0,
            denials_suppressed: 0,
        };
        plugin.log_state(broker, "started");
        plugin
    }

    fn log_state(&self, broker: &impl Broker, what: &str) {
        match (&self.rules.value, &self.revoked.value) {
            (Ok(rules), Ok(revoked)) => broker.log(
                Level::Notice,
                &format!(
                    "mqtt-mtls auth: {what}: rules from {} ({} roles), {} revoked serials from {}",
                    self.options.rules.display(),
                    rules.roles().count(),
                    revoked.len(),
                    self.options.crl.display()
                ),
            ),
            (rules, revoked) => {
                for e in [rules.as_ref().err(), revoked.as_ref().err()]
                    .into_iter()
                    .flatten()
                {
                    broker.log(
                        Level::Error,
                        &format!("mqtt-mtls auth: refusing every client: {e}"),
                    );
                }
            }
        }
    }

    /// The ACL check: whether `client` may do `access` on `topic`.
    pub fn acl_check(
        &mut self,
        broker: &impl Broker,
        client: ClientKey,
        access: Access,
        topic: &str,
    ) -> bool {
        let request = match access {
            // Always allowed: a refused UNSUBSCRIBE would silently keep the
            // subscription.
            Access::Unsubscribe => return true,
            Access::Read => Request::Read(topic),
            Access::Write => Request::Write(topic),
            Access::Subscribe => Request::Subscribe(topic),
        };
        let (Ok(rules), Ok(revoked)) = (&self.rules.value, &self.revoked.value) else {
            return false;
        };
        let (rules, revoked) = (Arc::clone(rules), Arc::clone(revoked));
        self.watch_ticks(broker);
        let Some(conn) = self.connection(broker, client, &rules) else {
            // No certificate and never seen: an offline session the broker
            // kept from before it restarted (or past `max_offline`). Its
            // deliveries are queued; Mosquitto checks every queued message
            // again against the certificate it reconnects with
            // (`connection_check_acl`), so nothing reaches the wrong
            // identity. Anything else is refused.
            return access == Access::Read;
        };
        let Identity::Known { serial, .. } = conn.identity.as_ref() else {
            return false;
        };
        if revoked.refuses(serial) {
            // Until the broker's reload refuses its handshakes, a revoked
            // certificate that connects again is taken off at every tick.
            // Kicked only when connected: an offline session's deliveries
            // are merely refused (a kick by its client id could hit the
            // device's new connection).
            if let Some(id) = conn.client_id.clone()
                && self.live.contains_key(&client)
            {
                self.kicks.insert(id);
            }
            return false;
        }
        let allowed = conn.grant.allows(request);
        if !allowed && access == Access::Subscribe {
            let who = conn.client_id.clone().unwrap_or_else(|| "?".into());
            if self.denials_logged < DENIALS_PER_POLL {
                self.denials_logged += 1;
                broker.log(
                    Level::Notice,
                    &format!(
                        "mqtt-mtls auth: denied SUBSCRIBE to {topic:?} by {who} (not in its role's rules)"
                    ),
                );
            } else {
                self.denials_suppressed += 1;
            }
        }
        allowed
    }

    /// Says once, loudly, when the broker has not ticked for 5 s: then
    /// files are not read again and revoked connections not taken off.
    fn watch_ticks(&mut self, broker: &impl Broker) {
        if !self.no_tick_reported && self.last_tick.elapsed() > Duration::from_secs(5) {
            self.no_tick_reported = true;
            broker.log(
                Level::Error,
                "mqtt-mtls auth: the broker has not ticked for 5 s (per_listener_settings true?): \
                 changes to the CRL and rules are not applied and revoked connections stay; set \
                 per_listener_settings false",
            );
        }
    }

    /// The connection's entry: the live one, else made from its
    /// certificate, else (no certificate: an offline session, a Last Will)
    /// the last identity seen with its client id.
    fn connection(
        &mut self,
        broker: &impl Broker,
        client: ClientKey,
        rules: &Rules,
    ) -> Option<&Conn> {
        let generation = self.generation;
        let regrant = |conn: &mut Conn| {
            if conn.generation != generation {
                conn.grant = Arc::new(grant(rules, &conn.identity));
                conn.generation = generation;
            }
        };
        if self.live.contains_key(&client) {
            let conn = self.live.get_mut(&client)?;
            regrant(conn);
            return Some(conn);
        }
        match broker.certificate(client) {
            Some(der) => {
                let conn = self.identify(broker, client, &der, rules);
                // Nothing of an earlier client at this address stays, and
                // this client id's offline session, if any, now belongs to
                // this connection.
                self.forget_offline(client, None);
                if let Some(id) = &conn.client_id
                    && let Some(&old) = self.offline_by_id.get(id)
                {
                    self.forget_offline(old, None);
                }
                Some(self.live.entry(client).or_insert(conn))
            }
            None => {
                // The socket is closed (a Last Will, or a delivery queued
                // for an offline session): the identity it had.
                let conn = self.offline.get_mut(&client)?;
                if conn.client_id != broker.client_id(client) {
                    return None;
                }
                regrant(conn);
                Some(conn)
            }
        }
    }

    /// A connection's entry from its certificate (DER).
    fn identify(&self, broker: &impl Broker, client: ClientKey, der: &[u8], rules: &Rules) -> Conn {
        let client_id = broker.client_id(client);
        let mut identity = Identity::from_der(der);
        // The CN is the username on our listeners: a certificate the broker
        // read otherwise gets nothing.
        if let (Some(name), Some(username)) = (identity.name(), broker.username(client))
            && name != username
        {
            identity =
                Identity::Refused(format!("its CN {name:?} is not its username {username:?}"));
        }
        if let Identity::Refused(why) = &identity {
            broker.log(
                Level::Warning,
                &format!(
                    "mqtt-mtls auth: refusing everything to {}: {why}",
                    client_id.as_deref().unwrap_or("?")
                ),
            );
        }
        Conn {
            grant: Arc::new(grant(rules, &identity)),
            identity: Arc::new(identity),
            client_id,
            generation: self.generation,
            seq: 0,
        }
    }

    /// The client's connection ended (`MOSQ_EVT_DISCONNECT`: its socket
    /// is still open, its Last Will not yet checked). Its identity is kept
    /// for its session (read from its certificate now if it made no check
    /// while connected), and forgotten at the next tick when the session
    /// ends with the connection.
    pub fn disconnect(&mut self, broker: &impl Broker, client: ClientKey) {
        // Whatever an earlier client at this address left goes first.
        self.forget_offline(client, None);
        let conn = match self.live.remove(&client) {
            Some(conn) => conn,
            None => {
                let (Ok(rules), Some(der)) = (&self.rules.value, broker.certificate(client)) else {
                    return;
                };
                let rules = Arc::clone(rules);
                self.identify(broker, client, &der, &rules)
            }
        };
        // One offline session per client id: an older one elsewhere is
        // the broker's no more.
        if let Some(id) = &conn.client_id
            && let Some(&old) = self.offline_by_id.get(id)
        {
            self.forget_offline(old, None);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(id) = &conn.client_id {
            self.offline_by_id.insert(id.clone(), client);
        }
        self.offline.insert(client, Conn { seq, ..conn });
        self.offline_order.push_back((client, seq));
        while self.offline.len() > self.options.max_offline {
            let Some((oldest, seq)) = self.offline_order.pop_front() else {
                break;
            };
            self.forget_offline(oldest, Some(seq));
        }
        if broker.ends_with_connection(client) {
            self.ended.push((client, seq));
        }
    }

    /// Forgets the offline entry at `client` (only the one numbered `seq`,
    /// when given), and its client id's pointer to it.
    fn forget_offline(&mut self, client: ClientKey, seq: Option<u64>) {
        if seq.is_some_and(|seq| self.offline.get(&client).is_none_or(|c| c.seq != seq)) {
            return;
        }
        if let Some(conn) = self.offline.remove(&client)
            && let Some(id) = conn.client_id
            && self.offline_by_id.get(&id) == Some(&client)
        {
            self.offline_by_id.remove(&id);
        }
    }

    /// The broker's tick: reads changed files, and returns the client ids
    /// to disconnect (without their Last Will). The caller kicks them
    /// after it let go of the plugin: a kick calls back into it
    /// (`MOSQ_EVT_DISCONNECT`).
    pub fn tick(&mut self, broker: &impl Broker, now: Instant) -> Vec<String> {
        self.last_tick = Instant::now();
        if self
            .last_poll
            .is_none_or(|last| now.duration_since(last) >= POLL)
        {
            self.last_poll = Some(now);
            for (client, seq) in std::mem::take(&mut self.ended) {
                self.forget_offline(client, Some(seq));
            }
            // Entries forgotten leave stale places in the order: dropped
            // once they are most of it.
            if self.offline_order.len() > 2 * self.offline.len() + 1024 {
                let offline = &self.offline;
                self.offline_order
                    .retain(|(k, seq)| offline.get(k).is_some_and(|c| c.seq == *seq));
            }
            if self.denials_suppressed > 0 {
                broker.log(
                    Level::Notice,
                    &format!(
                        "mqtt-mtls auth: {} more SUBSCRIBEs denied (not logged one by one)",
                        self.denials_suppressed
                    ),
                );
            }
            (self.denials_logged, self.denials_suppressed) = (0, 0);
            self.poll_rules(broker);
            self.poll_crl(broker);
        }
        let kicks: Vec<String> = std::mem::take(&mut self.kicks).into_iter().collect();
        for id in &kicks {
            broker.log(
                Level::Notice,
                &format!("mqtt-mtls auth: disconnecting {id}: its certificate is revoked"),
            );
        }
        kicks
    }

    fn poll_rules(&mut self, broker: &impl Broker) {
        if stamp(&self.options.rules) == self.rules.stamp {
            return;
        }
        let new = load_rules(&self.options.rules);
        let same = match (&new.value, &self.rules.value) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        self.rules = new;
        if !same {
            self.generation += 1;
            self.log_state(broker, "rules read again");
        }
    }

    fn poll_crl(&mut self, broker: &impl Broker) {
        if let Some(job) = &self.crl_job {
            match job.try_recv() {
                Ok(read) => {
                    self.crl_job = None;
                    self.apply_crl(broker, read);
                }
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => self.crl_job = None,
            }
        }
        if stamp(&self.options.crl) == self.revoked.stamp {
            return;
        }
        // A large CRL is parsed off the broker's thread: deliveries go on.
        let path = self.options.crl.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("mqtt-mtls-crl".into())
            .spawn(move || {
                let _ = tx.send(load_crl(&path));
            });
        match spawned {
            Ok(_) => self.crl_job = Some(rx),
            Err(_) => {
                let read = load_crl(&self.options.crl);
                self.apply_crl(broker, read);
            }
        }
    }

    fn apply_crl(&mut self, broker: &impl Broker, (stamp, read): CrlRead) {
        match read {
            Ok((digest, revoked)) => {
                let mut off = 0;
                for conn in self.live.values() {
                    if let (Identity::Known { serial, .. }, Some(id)) =
                        (conn.identity.as_ref(), &conn.client_id)
                        && revoked.refuses(serial)
                    {
                        self.kicks.insert(id.clone());
                        off += 1;
                    }
                }
                let was_ok = self.revoked.value.is_ok();
                self.revoked = Loaded {
                    stamp,
                    value: Ok(Arc::new(revoked)),
                };
                if !was_ok {
                    self.log_state(broker, "CRL readable again");
                }
                if self.crl_digest != Some(digest) {
                    self.crl_digest = Some(digest);
                    broker.log(
                        Level::Notice,
                        &format!(
                            "mqtt-mtls auth: the CRL changed ({} serials; {off} live connections \
                             revoked): reloading the broker so that handshakes are checked \
                             against it",
                            self.revoked.value.as_ref().map_or(0, |r| r.len())
                        ),
                    );
                    broker.reload();
                }
            }
            Err(e) => {
                self.revoked = Loaded {
                    stamp,
                    value: Err(e),
                };
                self.log_state(broker, "CRL read again");
            }
        }
    }

    /// The broker reloaded its configuration (`MOSQ_EVT_RELOAD`).
    pub fn reloaded(&self, broker: &impl Broker) {
        broker.log(
            Level::Notice,
            "mqtt-mtls auth: the broker reloaded; new handshakes are checked against the CRL",
        );
    }

    /// Whether both files were read and parsed (else everything is
    /// refused).
    pub fn is_ready(&self) -> bool {
        self.rules.value.is_ok() && self.revoked.value.is_ok()
    }

    /// Whether the CRL is still being read after a change.
    pub fn is_reading_crl(&self) -> bool {
        self.crl_job.is_some()
    }
}

fn grant(rules: &Rules, identity: &Identity) -> Grant {
    match identity {
        Identity::Known { name, role, .. } => rules.grant(role, name),
        Identity::Refused(_) => Grant::default(),
    }
}

#[cfg(test)]
mod tests;
