//! One module per subcommand: each turns parsed arguments into work and output.

pub mod connect;
pub mod keygen;
pub mod list;
pub mod render;
pub mod serve;
pub mod submit;
pub mod task;
