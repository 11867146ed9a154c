//! `wgprov lab`: the local testbed of the inventory's sites.

use super::*;

pub(super) fn lab(cmd: LabCommand) -> Result<u8> {
    use crate::lab;
    match cmd {
        LabCommand::Up {
            inv,
            prefix,
            no_port_forward,
            controller_at,
            systemd,
        } => {
            let p = planned(&inv.inventory, true)?;
            let mut layout = lab::plan::plan(
                &p.inventory,
                &p.topology,
                &prefix,
                &no_port_forward,
                controller_at.as_deref(),
            )?;
            if systemd {
                lab::preflight()?;
                lab::systemd::preflight(layout.nodes.len())?;
                layout.systemd = Some(lab::systemd::ensure_image()?);
            }
            let st = lab::up(&inv.inventory, &layout)?;
            for w in [lab::inotify_warning, lab::neighbour_warning]
                .iter()
                .filter_map(|f| f(st.nodes.len()))
            {
                eprintln!("{w}");
            }
            println!(
                "lab {prefix} is up: {} sites, {} nodes{}, controller reaches them over SSH",
                st.routers.len(),
                st.nodes.len(),
                if systemd {
                    " (Debian under systemd-nspawn)"
                } else {
                    ""
                }
            );
            println!(
                "  wgprov lab exec --prefix {prefix} controller -- wgprov apply -i {}",
                st.inventory.display()
            );
            println!("  wgprov lab down --prefix {prefix}");
            Ok(EXIT_OK)
        }
        LabCommand::Down { prefix } => {
            let r = lab::down(&prefix)?;
            println!(
                "lab {prefix}: removed {} namespaces, stopped {} processes{}",
                r.namespaces.len(),
                r.processes,
                if r.dir_removed {
                    ", removed its directory"
                } else {
                    ""
                }
            );
            Ok(EXIT_OK)
        }
        LabCommand::Exec { prefix, name, cmd } => {
            let code = lab::exec(&prefix, &name, &cmd)?;
            Ok(u8::try_from(code).unwrap_or(EXIT_FAILED))
        }
        LabCommand::MeshOnly { prefix } => {
            let removed = lab::mesh_only(&prefix)?;
            println!(
                "lab {prefix}: removed the controller's {} management routes; it reaches nodes over its LAN leg and the mesh only",
                removed.len()
            );
            Ok(EXIT_OK)
        }
        LabCommand::Status { prefix } => {
            print!("{}", lab::status(&prefix)?);
            Ok(EXIT_OK)
        }
        LabCommand::Demo { prefix, systemd } => lab_demo(&prefix, systemd),
    }
}

/// `wgprov lab demo`: exit 0 only when every cross-site ping crossed.
pub(super) fn lab_demo(prefix: &str, systemd: bool) -> Result<u8> {
    let report = crate::lab::demo::run(prefix, systemd)?;
    Ok(if report.all_crossed() {
        EXIT_OK
    } else {
        EXIT_FAILED
    })
}
