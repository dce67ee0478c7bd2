//! The command line: clap definitions (`args`) and one function per
//! command returning a typed outcome (`commands`; the CA service and the
//! device lifecycle in `lifecycle`).

pub(crate) mod args;
pub(crate) mod commands;
pub(crate) mod lifecycle;
pub(crate) mod outcomes;
