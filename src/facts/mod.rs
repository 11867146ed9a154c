//! What a host has now: one shell script gathered in one exec ([`gather`]), and the parsers
//! facts are read with — a wg-quick config reader/editor and a kubelet defaults-file editor.

pub mod gather;
pub mod kubelet;
pub mod wgconf;

pub use gather::{Facts, FileFact};
