//! No bundled roots. This crate stands in for crates.io's `webpki-roots`
//! in this workspace: sqlx's rustls backend would trust Mozilla's roots
//! beside the operator's `sslrootcert`, so that any public CA's
//! certificate for the database's host name would do. Here only the
//! operator's file is trusted (libpq's meaning of `sslrootcert`).

/// The bundled trust anchors: none.
pub const TLS_SERVER_ROOTS: &[rustls_pki_types::TrustAnchor<'static>] = &[];
