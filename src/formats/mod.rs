//! The text formats wgprov reads and writes, as pure leaves: wg-quick configs (a lossless
//! reader/editor, and redaction of keys), the kubelet defaults file, and the state a host
//! reports (files, `wg show dump`, os-release).

pub mod kubelet;
pub mod state;
pub mod wgconf;
