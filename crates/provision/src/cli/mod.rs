//! The command line: clap definitions (`args`) and one function per
//! command returning a typed outcome (`commands`).

pub(crate) mod args;
pub(crate) mod commands;
