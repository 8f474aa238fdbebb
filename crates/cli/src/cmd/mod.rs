//! One module per group of commands.

pub mod compute;
pub mod files;
pub mod serve;
pub mod sync;
pub mod token;
