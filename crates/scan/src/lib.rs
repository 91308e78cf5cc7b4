//! placeholder
pub mod archive;
pub mod config;
pub mod download;
