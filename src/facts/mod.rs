//! What a host has now. For the offline core: the parsers that facts are read with — a
//! wg-quick config reader/editor and a kubelet defaults-file editor.

pub mod kubelet;
pub mod wgconf;
