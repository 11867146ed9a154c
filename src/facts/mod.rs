//! What a host has now: one shell script gathered in one exec ([`gather`]), parsed into the
//! state types of [`crate::formats::state`].

pub mod gather;

pub use crate::formats::{kubelet, wgconf};
pub use gather::{Facts, FileFact};
