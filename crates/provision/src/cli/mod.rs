//! The command line: clap definitions (`args`) and one function per
//! command returning a typed outcome (`commands`; the CA service and the
//! device lifecycle in `enrollment`).

pub(crate) mod args;
pub(crate) mod commands;
pub(crate) mod enrollment;
pub(crate) mod outcomes;
