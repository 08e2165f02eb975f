//! One module per subcommand: each turns parsed arguments into work and output.

pub mod list;
