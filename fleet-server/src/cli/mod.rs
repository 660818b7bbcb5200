//! Subcommands of `outpost`.

pub(crate) mod model;
