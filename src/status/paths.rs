//! Where a node keeps the files status reads: its WireGuard config and the file that sets the
//! kubelet's node IP (per Kubernetes flavor and OS family).

use crate::inventory::{Flavor, OsFamily};
use crate::shell::InterfaceName;

/// The kubelet defaults file of `os` (kubeadm flavor; the kubelet role writes it).
pub fn kubelet_path(os: OsFamily) -> &'static str {
    match os {
        OsFamily::Debian => "/etc/default/kubelet",
        OsFamily::Redhat => "/etc/sysconfig/kubelet",
    }
}

/// Where a node of `flavor` has its node IP written (by the kubelet role).
pub fn node_ip_path(flavor: Flavor, os: OsFamily) -> &'static str {
    match flavor {
        Flavor::Kubeadm => kubelet_path(os),
        Flavor::K3s => "/etc/rancher/k3s/config.yaml.d/50-wgprov.yaml",
        Flavor::Rke2 => "/etc/rancher/rke2/config.yaml.d/50-wgprov.yaml",
    }
}

/// The WireGuard config file of `iface` (the wireguard role writes it).
pub fn conf_path(iface: &InterfaceName) -> String {
    format!("/etc/wireguard/{iface}.conf")
}
