//! multipath-tools' `multipath.conf`: [`parse`] reads it (every error with its line and
//! column), [`import`] turns it into mpathd's TOML config (every setting carried over or
//! noted).

mod import;
mod parse;

pub use import::{Import, import};
pub use parse::{ConfFile, Item, MAX_DEPTH, Section, Setting, Word, parse};

#[cfg(test)]
mod tests;
