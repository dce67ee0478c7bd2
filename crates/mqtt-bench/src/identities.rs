//! Issuing identities: ours ([`run`], the real `provision` bulk issuance
//! path, files included, on N threads) against the original Python flow and
//! an `openssl` CLI loop ([`compare`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use pki_core::{KeyType, Profile};
use provision::files::Durability;
use provision::ops::{CsrRequest, IssueRequest, SubjectOptions, issue_files};
use rayon::prelude::*;

use crate::all::{Peers, step};
use crate::results::{IdentitiesP256, IdentitiesRsa, IdentitiesRun, Sizes, median, median_by};
use crate::{openssl, python};

/// Issues `count` identities the way `provision issue` does (key, CSR,
/// the CA's checks, signature, files written atomically; the signature of
/// a CSR made here with its own key is not verified), on `threads`
/// threads (0: all cores), into `out` (a new folder: the caller keeps it
/// until its measurements are done, as deleting thousands of files makes
/// ext4's inode allocator slow for the next run on the same disk).
pub(crate) fn run(
    key_type: KeyType,
    count: usize,
    threads: usize,
    out: &Path,
) -> anyhow::Result<IdentitiesRun> {
    std::fs::create_dir(out).with_context(|| format!("creating {}", out.display()))?;
    let ca = pki_core::CertificateAuthority::new_root(
        &pki_core::Subject::new("Bench Root")?,
        pki_core::KeyPair::generate(KeyType::P256)?,
        pki_core::Validity::days_from_now(3650)?,
    )?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    // Each thread's first key seeds its random generator (aws-lc's jitter
    // entropy, milliseconds once per thread): done before the clock starts,
    // as the Python flow starts its clock after its imports and CA key.
    pool.broadcast(|_| pki_core::KeyPair::generate(key_type).map(|_| ()))
        .into_iter()
        .collect::<Result<(), _>>()?;
    let started = Instant::now();
    pool.install(|| {
        (0..count).into_par_iter().try_for_each(|i| {
            let request = IssueRequest {
                identity: CsrRequest {
                    name: provision::files::Name::new(format!("dev-{i}"))?,
                    subject: SubjectOptions::default(),
                    key_type,
                    dns: vec![],
                    ip: vec![],
                    out: out.to_owned(),
                    force: false,
                    token: None,
                },
                profile: Profile::Client,
                days: 365,
                role: provision::roles::Role::Device,
            };
            // As `provision fleet` writes: one flush at the end.
            issue_files(
                |csr, params| Ok(ca.sign(csr, params)?),
                ca.certificate(),
                &request,
                Durability::Deferred,
            )
            .map(|_| ())
        })
    })?;
    let written = started.elapsed().as_secs_f64();
    provision::files::flush_all();
    let seconds = started.elapsed().as_secs_f64();
    Ok(IdentitiesRun {
        key_type: key_type.as_str().to_owned(),
        threads: pool.current_num_threads(),
        count,
        seconds,
        flush_seconds: seconds - written,
        per_second: count as f64 / seconds,
    })
}

/// Ours against the Python flow and the `openssl` CLI, `sizes.repetitions`
/// times, P-256 then RSA-2048; medians.
///
/// Every run writes into a folder of its own under `dir`, which the caller
/// deletes only when all its measurements are done: deleting thousands of
/// files just before a run makes ext4 skip the freed inodes one by one
/// (`recently_deleted`), and that, not the work measured, would then set
/// the pace. Each timed run starts after a `sync`, with no other run's
/// writes pending, and the sides take turns so that the machine's noise
/// falls on both alike. Ours runs in a process of its own each time.
pub(crate) fn compare(
    sizes: &Sizes,
    peers: &Peers,
    dir: &Path,
) -> anyhow::Result<(IdentitiesP256, IdentitiesRsa)> {
    let mut run_no = 0;
    let mut fresh = || {
        run_no += 1;
        flush_disks();
        dir.join(format!("run-{run_no}"))
    };
    let ours = |key_type: &str, count: usize, threads: usize, out: PathBuf| {
        step::<IdentitiesRun>(&[
            "identities".into(),
            key_type.into(),
            count.to_string().into(),
            threads.to_string().into(),
            out.into_os_string(),
        ])
    };
    let n = sizes.identities;
    let (mut ours_1, mut ours_all, mut openssl_rate, mut py) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..sizes.repetitions {
        ours_1.push(ours("p256", n, 1, fresh())?.per_second);
        py.push(python::identities(&peers.python, "p256", n, &fresh())?);
        ours_all.push(ours("p256", n, 0, fresh())?);
        openssl_rate.push(openssl::identities(
            &peers.openssl,
            sizes.openssl_identities,
            &fresh(),
        )?);
    }
    // Our rate includes the final sync (the files are on disk); the Python
    // flow never syncs. `unflushed` is ours up to the sync (the same on that point).
    let all = median_by(ours_all, |r| r.per_second).context("no identities run")?;
    let p256 = IdentitiesP256::new(
        median(ours_1),
        all.per_second,
        all.unflushed_per_second(),
        median(py),
        median(openssl_rate),
    );
    // RSA key generation is a random prime search: single runs swing, so
    // the sides take turns and each reports its median.
    let (mut rsa, mut rsa_py) = (Vec::new(), Vec::new());
    for _ in 0..sizes.repetitions {
        rsa.push(ours("rsa2048", sizes.rsa_identities, 0, fresh())?.per_second);
        rsa_py.push(python::identities(
            &peers.python,
            "rsa2048",
            sizes.rsa_identities,
            &fresh(),
        )?);
    }
    Ok((p256, IdentitiesRsa::new(median(rsa), median(rsa_py))))
}

/// Waits until the disks have written what earlier runs left pending, so
/// that a timed run does not pay for them.
fn flush_disks() {
    let _ = Command::new("sync").status();
}
