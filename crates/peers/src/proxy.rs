//! A fault-injecting TCP proxy for tests: it sits between our client and a
//! real broker, forwards bytes both ways, and on the test's word holds what
//! the broker sends (so that a packet is on its way but not delivered) or
//! cuts every open connection at once. TLS passes through untouched; the
//! test watches the MQTT exchange in the broker's log, and the TLS
//! handshake in the first bytes the broker sent on each connection
//! ([`FaultProxy::handshakes`]).

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running proxy on 127.0.0.1:`port`; dropping it stops it and closes
/// every connection through it.
pub struct FaultProxy {
    /// The port clients connect to.
    pub port: u16,
    hold: watch::Sender<bool>,
    /// Bytes the client may still send to the broker before they are held
    /// (`None`: no limit).
    allowance: watch::Sender<Option<usize>>,
    cuts: watch::Sender<u64>,
    /// The first bytes from the broker on each connection, in order.
    from_broker: Recorded,
    accept: JoinHandle<()>,
}

/// How many bytes from the broker are kept per connection: enough for the
/// TLS ServerHello.
const RECORDED: usize = 4096;

type Recorded = Arc<Mutex<Vec<Vec<u8>>>>;

/// How the broker answered a connection's TLS handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// A full handshake.
    Full,
    /// It accepted the client's session ticket (TLS 1.3 `pre_shared_key`).
    Resumed,
}

impl FaultProxy {
    /// Starts a proxy to 127.0.0.1:`upstream`.
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (hold, _) = watch::channel(false);
        let (allowance, _) = watch::channel(None);
        let (cuts, _) = watch::channel(0u64);
        let hold_rx = hold.subscribe();
        let allowance_tx = allowance.clone();
        let cuts_rx = cuts.subscribe();
        let from_broker = Recorded::default();
        let recorded = from_broker.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(broker) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = broker.set_nodelay(true);
                let record = {
                    let mut all = recorded.lock().unwrap();
                    all.push(Vec::new());
                    (recorded.clone(), all.len() - 1)
                };
                tokio::spawn(pump_pair(
                    client,
                    broker,
                    hold_rx.clone(),
                    allowance_tx.clone(),
                    cuts_rx.clone(),
                    record,
                ));
            }
        });
        Self {
            port,
            hold,
            allowance,
            cuts,
            from_broker,
            accept,
        }
    }

    /// From now on, bytes from the broker wait in the proxy instead of
    /// reaching the client (the client's bytes still reach the broker).
    pub fn hold_to_client(&self) {
        self.hold.send_replace(true);
    }

    /// From now on, the client's next `bytes` bytes reach the broker and
    /// what follows waits in the proxy (a stall in the middle of a packet).
    pub fn hold_to_broker_after(&self, bytes: usize) {
        self.allowance.send_replace(Some(bytes));
    }

    /// Waits until the allowance of [`FaultProxy::hold_to_broker_after`] is
    /// used up: what the client sends from then on is held (give an
    /// allowance smaller than what the client is about to send).
    pub async fn wait_held_to_broker(&self) {
        let mut allowance = self.allowance.subscribe();
        let _ = allowance.wait_for(|a| *a == Some(0)).await;
    }

    /// Delivers held bytes (both ways) and forwards as usual again.
    pub fn release(&self) {
        self.hold.send_replace(false);
        self.allowance.send_replace(None);
    }

    /// Closes every connection open now, both ways; held bytes are lost.
    /// Later connections go through.
    pub fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }

    /// How the broker answered the TLS handshake of each connection so
    /// far, read from its ServerHello (`None`: no ServerHello seen).
    pub fn handshakes(&self) -> Vec<Option<Handshake>> {
        let recorded = self.from_broker.lock().unwrap();
        recorded.iter().map(|bytes| server_hello(bytes)).collect()
    }
}

/// Whether the ServerHello at the start of `bytes` (RFC 8446 section 4.1.3)
/// accepts a pre-shared key, i.e. resumes a session (section 4.2.11).
fn server_hello(bytes: &[u8]) -> Option<Handshake> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (b.get(..n)?, b.get(n..)?);
        *b = rest;
        Some(head)
    }
    fn u16_at(b: &[u8]) -> usize {
        usize::from(u16::from_be_bytes([b[0], b[1]]))
    }
    let mut b = bytes;
    // The record: handshake (22), version, length.
    let header = take(&mut b, 5)?;
    if header[0] != 22 {
        return None;
    }
    let mut record = take(&mut b, u16_at(&header[3..]))?;
    // The handshake message: ServerHello (2), 24-bit length.
    let header = take(&mut record, 4)?;
    if header[0] != 2 {
        return None;
    }
    let len = (usize::from(header[1]) << 16) | u16_at(&header[2..]);
    let mut hello = take(&mut record, len)?;
    // legacy_version, random, legacy_session_id_echo, cipher_suite,
    // legacy_compression_method, then the extensions.
    take(&mut hello, 2 + 32)?;
    let session_id = usize::from(take(&mut hello, 1)?[0]);
    take(&mut hello, session_id + 2 + 1)?;
    let len = u16_at(take(&mut hello, 2)?);
    let mut extensions = take(&mut hello, len)?;
    while !extensions.is_empty() {
        let header = take(&mut extensions, 4)?;
        take(&mut extensions, u16_at(&header[2..]))?;
        // pre_shared_key
        if u16_at(header) == 41 {
            return Some(Handshake::Resumed);
        }
    }
    Some(Handshake::Full)
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn pump_pair(
    client: TcpStream,
    broker: TcpStream,
    hold: watch::Receiver<bool>,
    allowance: watch::Sender<Option<usize>>,
    mut cuts: watch::Receiver<u64>,
    record: (Recorded, usize),
) {
    cuts.mark_unchanged();
    let (client_read, client_write) = client.into_split();
    let (broker_read, broker_write) = broker.into_split();
    let (_keep, never_hold) = watch::channel(false);
    let up = pump(
        client_read,
        broker_write,
        never_hold,
        Some(allowance),
        cuts.clone(),
        None,
    );
    let down = pump(
        broker_read,
        client_write,
        hold,
        None,
        cuts.clone(),
        Some(record),
    );
    // Whichever ends first (a side closed, or a cut) ends both: dropping
    // the halves closes the sockets.
    tokio::select! {
        () = up => {}
        () = down => {}
        _ = cuts.changed() => {}
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut hold: watch::Receiver<bool>,
    allowance: Option<watch::Sender<Option<usize>>>,
    mut cuts: watch::Receiver<u64>,
    record: Option<(Recorded, usize)>,
) {
    let generation = *cuts.borrow_and_update();
    let mut allowed = allowance.as_ref().map(watch::Sender::subscribe);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if let Some((recorded, index)) = &record {
            let mut recorded = recorded.lock().unwrap();
            let kept = &mut recorded[*index];
            let room = RECORDED.saturating_sub(kept.len());
            kept.extend_from_slice(&buf[..n.min(room)]);
        }
        let mut sent = 0;
        while sent < n {
            // Held bytes wait for a release; a cut (even one followed at
            // once by a release) drops them: the cut is checked first
            // every time.
            if *cuts.borrow_and_update() != generation {
                return;
            }
            let budget = match (&allowance, allowed.as_mut()) {
                (Some(tx), Some(rx)) => {
                    let budget = *rx.borrow_and_update();
                    if let Some(b) = budget
                        && b > 0
                    {
                        let take = b.min(n - sent);
                        tx.send_replace(Some(b - take));
                        rx.borrow_and_update();
                    }
                    budget.map(|b| b.min(n - sent))
                }
                _ => None,
            };
            let take = budget.unwrap_or(n - sent);
            if take == 0 || *hold.borrow_and_update() {
                let more = async {
                    match allowed.as_mut() {
                        Some(rx) => rx.changed().await.is_ok(),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    r = hold.changed() => if r.is_err() { return },
                    r = cuts.changed() => if r.is_err() { return },
                    ok = more => if !ok { return },
                }
                continue;
            }
            if to.write_all(&buf[sent..sent + take]).await.is_err() {
                return;
            }
            sent += take;
        }
    }
}
