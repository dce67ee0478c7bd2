//! Scale-out: three mqtt-ingest instances in one shared-subscription group
//! (`--share-group`) on one Mosquitto and one PostgreSQL, fed by ten
//! independent publishers with numbered QoS 1 messages.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{
    Db, Ingest, IngestCommands, Publisher, check_at_least_once, persistent_broker, wait_for_rows,
};
use peers::mosquitto::{Mosquitto, Pki};
use peers::postgres::Postgres;

const INSTANCES: usize = 3;
const PUBLISHERS: u32 = 10;

struct Group {
    pki: Pki,
    broker: Mosquitto,
    db: Db,
}

impl Group {
    fn new() -> Self {
        let pki = Pki::new();
        let broker = persistent_broker(&pki);
        Self {
            pki,
            broker,
            db: Db::Postgres(Postgres::start()),
        }
    }

    /// Instance `i` of the group: its own identity and client id, the
    /// group's share name, QoS 1 on `load/#`.
    fn instance(&self, i: usize) -> Ingest {
        let name = format!("ingest-{i}");
        let bundle = self.pki.client(&name);
        Ingest::spawn(
            Ingest::command(&bundle, &self.broker, &self.db, &name)
                .args(["--share-group", "ingest"]),
        )
    }

    /// Ten publishers, each sending its own slice of `0..total`.
    async fn publish(&self, total: u32, on_the_way: impl AsyncFnOnce()) -> BTreeSet<u32> {
        let mut publishers = Vec::new();
        for p in 0..PUBLISHERS {
            publishers
                .push(Publisher::connect_as(&self.pki, &self.broker, &format!("pub-{p}")).await);
        }
        let per = total / PUBLISHERS;
        let sends: Vec<_> = publishers
            .iter()
            .zip(0..)
            .map(|(publisher, p)| publisher.send(p * per..(p + 1) * per))
            .collect();
        on_the_way().await;
        for send in sends {
            send.await.unwrap();
        }
        publishers.iter().flat_map(|p| p.acked()).collect()
    }
}

fn wait_acknowledged(instances: &[Ingest], total: u64) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let acked: Vec<u64> = instances
            .iter()
            .map(|i| i.metric("mqtt_ingest_acknowledged_total"))
            .collect();
        if acked.iter().sum::<u64>() >= total {
            return acked;
        }
        assert!(Instant::now() < deadline, "acknowledged only {acked:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_splits_the_stream_and_stores_each_message_once() {
    let group = tokio::task::block_in_place(Group::new);
    let instances: Vec<Ingest> =
        tokio::task::block_in_place(|| (0..INSTANCES).map(|i| group.instance(i)).collect());
    const N: u32 = 10_000;
    let acked = group.publish(N, async || {}).await;
    assert_eq!(acked.len(), N as usize);

    let rows = wait_for_rows(&group.db, N as usize).await;
    assert_eq!(rows.len(), N as usize, "each message stored exactly once");
    assert!(rows.iter().all(|(_, dup)| !dup));
    let stored: BTreeSet<u32> = rows.iter().map(|(n, _)| *n).collect();
    assert_eq!(stored, (0..N).collect());
    let per_instance = tokio::task::block_in_place(|| wait_acknowledged(&instances, N.into()));
    assert!(
        per_instance.iter().all(|&n| n > 0),
        "every member took a share: {per_instance:?}"
    );
    println!("shared: {per_instance:?} of {N} messages per instance");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_killed_midway_loses_nothing_acknowledged() {
    let group = tokio::task::block_in_place(Group::new);
    let mut instances: Vec<Ingest> =
        tokio::task::block_in_place(|| (0..INSTANCES).map(|i| group.instance(i)).collect());
    const N: u32 = 50_000;
    let acked = group
        .publish(N, async || {
            // Midway: SIGKILL one member, then bring it back under the same
            // client id (its persistent session holds what it had in flight).
            wait_for_rows(&group.db, N as usize / 3).await;
            tokio::task::block_in_place(|| {
                instances[1].kill9();
                instances[1] = group.instance(1);
            });
        })
        .await;
    assert_eq!(acked.len(), N as usize, "every publish acknowledged");

    let rows = wait_for_rows(&group.db, N as usize).await;
    let (stored, twice) = check_at_least_once(&rows, &acked);
    println!(
        "3 instances, one SIGKILLed: {stored} messages stored, {} rows, {twice} stored twice (redelivered)",
        rows.len()
    );
}
