//! One module per group of commands.

pub mod compute;
pub mod files;
pub mod login;
pub mod serve;
pub mod status;
pub mod sync;
pub mod token;
