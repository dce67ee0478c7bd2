//! The provisioning library behind the `provision` CLI: the on-disk layout
//! of the original design (`root_cert/root_ca_cert.pem`,
//! `root_cert/root_ca.key`, `backend_certs/NAME.key`, `NAME_csr.pem`,
//! `NAME_cert.pem`), safe file handling, the inventory, bulk issuance from a
//! fleet manifest, broker configuration, and one-shot pub/sub.
//!
//! ```no_run
//! use provision::ops::{CsrRequest, InitCa, IssueRequest, SubjectOptions, init_ca, issue};
//! use provision::store::CaDir;
//! use pki_core::{KeyType, Profile};
//!
//! let ca_dir = CaDir::new("root_cert");
//! let ca = init_ca(&ca_dir, &InitCa {
//!     subject: SubjectOptions { common_name: Some("MyRootCA".into()), ..Default::default() },
//!     key_type: KeyType::P256,
//!     days: 3650,
//!     passphrase: None,
//!     force: false,
//! })?;
//! issue(&ca_dir, &ca, &IssueRequest {
//!     identity: CsrRequest {
//!         name: "client1".into(),
//!         subject: SubjectOptions::default(),
//!         key_type: KeyType::P256,
//!         dns: vec![],
//!         ip: vec![],
//!         out: "backend_certs".into(),
//!         force: false,
//!     },
//!     profile: Profile::Client,
//!     days: 365,
//! })?;
//! # Ok::<(), provision::Error>(())
//! ```

#![forbid(unsafe_code)]

pub mod broker;
mod error;
pub mod files;
pub mod fleet;
pub mod inspect;
pub mod ops;
pub mod pubsub;
pub mod store;

pub use error::{Error, Result};
