//! The provisioning library behind the `provision` CLI: the on-disk layout
//! of the original design (`root_cert/root_ca_cert.pem`,
//! `root_cert/root_ca.key`, `backend_certs/NAME.key`, `NAME_csr.pem`,
//! `NAME_cert.pem`), safe file handling, the inventory, bulk issuance from a
//! fleet manifest, broker configuration, and one-shot pub/sub.
//!
//! [`layout`] names every path; [`ca_folder::CaDir`] is the CA folder (its
//! files, its lock, its archive); [`inventory`] is the record of what the CA
//! issued, changed only through an [`inventory::LockedCa`].
//!
//! ```no_run
//! use provision::inventory::Inventory;
//! use provision::ops::{CsrRequest, InitCa, IssueRequest, SubjectOptions, init_ca, issue};
//! use provision::ca_folder::CaDir;
//! use pki_core::{KeyType, Profile};
//!
//! let ca_dir = CaDir::new("root_cert");
//! let ca = init_ca(&ca_dir, &InitCa {
//!     subject: SubjectOptions { common_name: Some("MyRootCA".into()), ..Default::default() },
//!     key_type: KeyType::P256,
//!     days: 3650,
//!     passphrase: None,
//!     token: None,
//!     force: false,
//! })?;
//! // Every change goes through the CA's lock: one transaction.
//! let inventory = Inventory::open(&ca_dir)?;
//! let mut locked = inventory.lock(&ca)?;
//! issue(&mut locked, &IssueRequest {
//!     identity: CsrRequest {
//!         name: "client1".parse()?,
//!         subject: SubjectOptions::default(),
//!         key_type: KeyType::P256,
//!         dns: vec![],
//!         ip: vec![],
//!         out: "backend_certs".into(),
//!         force: false,
//!         token: None,
//!     },
//!     profile: Profile::Client,
//!     days: 365,
//!     role: provision::roles::Role::Device,
//! })?;
//! // Committed, then taken to every broker folder (its CRL and rules).
//! provision::broker::apply(&inventory, &locked.commit()?)?;
//! # Ok::<(), provision::Error>(())
//! ```

#![forbid(unsafe_code)]

pub mod audit;
pub mod broker;
pub mod ca_folder;
pub mod enrollment;
mod error;
pub mod files;
pub mod fleet;
pub mod inspect;
pub mod inventory;
pub mod layout;
pub mod ops;
/// Keys in PKCS#11 tokens: the [`token_keys`] crate, under its old name.
pub use token_keys as pkcs11;
pub mod pubsub;
pub mod roles;
pub mod serve;

pub use error::{Error, Result};
