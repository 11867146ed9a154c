//! The commands that touch no host: `validate`, `plan`, `graph`, `render`, `man`.

use super::*;

pub(super) fn validate(path: &Path, format: Format) -> Result<u8> {
    // validate never writes: allocation runs in memory only, to catch an exhausted space.
    let result = topology::plan_inventory(path, false);
    if let Ok(p) = &result {
        explain_ssh(&p.inventory);
    }
    let (diags, ok, summary) = match &result {
        Ok(p) => (
            p.warnings.clone(),
            true,
            format!(
                "{}: ok ({} sites, {} managed nodes{})",
                path.display(),
                p.topology.sites.len(),
                p.topology.nodes.len(),
                match p.topology.removed.len() {
                    0 => String::new(),
                    n => format!(", {n} to take out"),
                }
            ),
        ),
        Err(Error::Invalid(d)) => {
            let n = d.iter().filter(|d| d.is_error()).count();
            (
                d.clone(),
                false,
                format!(
                    "{}: {n} error{}",
                    path.display(),
                    if n == 1 { "" } else { "s" }
                ),
            )
        }
        Err(_) => {
            return result.map(|_| EXIT_OK);
        }
    };
    match format {
        Format::Json => {
            let doc = serde_json::json!({ "valid": ok, "diagnostics": diags });
            println!("{}", serde_json::to_string_pretty(&doc).expect("json"));
        }
        Format::Text => {
            for d in &diags {
                if d.is_error() {
                    println!("{d}");
                } else {
                    eprintln!("{d}");
                }
            }
            if ok {
                println!("{summary}");
            } else {
                eprintln!("{summary}");
            }
        }
    }
    Ok(if ok { EXIT_OK } else { EXIT_INVALID })
}

pub(super) fn plan(path: &Path, format: Format) -> Result<u8> {
    let p = planned(path, true)?;
    match format {
        Format::Text => print!("{}", output::plan_text(&p.topology)),
        Format::Json => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            output::write_plan_json(&p.topology, &mut out).map_err(|e| Error::io("stdout", e))?;
            writeln!(out).map_err(|e| Error::io("stdout", e))?;
        }
    }
    Ok(EXIT_OK)
}

pub(super) fn graph(path: &Path, format: GraphFormat) -> Result<u8> {
    let p = planned(path, false)?;
    print_picture(&output::graph_dot(&p.topology), format)?;
    Ok(EXIT_OK)
}

/// Prints DOT as it is, or rendered to SVG by Graphviz.
pub(super) fn print_picture(dot: &str, format: GraphFormat) -> Result<()> {
    match format {
        GraphFormat::Dot => print!("{dot}"),
        GraphFormat::Svg => {
            let svg = output::svg::render_svg(dot)?;
            std::io::stdout()
                .write_all(&svg)
                .map_err(|e| Error::io("stdout", e))?;
        }
    }
    Ok(())
}

/// The man page: `wgprov(1)`, every subcommand's options under its own heading.
pub(super) fn man() -> Result<u8> {
    use clap::CommandFactory;
    let cmd = Cli::command();
    let mut out = Vec::new();
    man_page(&cmd, &mut out).map_err(|e| Error::io("man page", e))?;
    std::io::stdout()
        .write_all(&out)
        .map_err(|e| Error::io("stdout", e))?;
    Ok(EXIT_OK)
}

pub(super) fn man_page(cmd: &clap::Command, out: &mut Vec<u8>) -> std::io::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    man.render_subcommands_section(out)?;
    // each subcommand's own synopsis and options (clap_mangen renders one command per page)
    for sub in cmd.get_subcommands() {
        writeln!(out, ".SH \"WGPROV {}\"", sub.get_name().to_uppercase())?;
        let page =
            clap_mangen::Man::new(sub.clone().bin_name(format!("wgprov {}", sub.get_name())));
        let mut body = Vec::new();
        page.render_synopsis_section(&mut body)?;
        page.render_description_section(&mut body)?;
        page.render_options_section(&mut body)?;
        if sub.has_subcommands() {
            page.render_subcommands_section(&mut body)?;
        }
        // demote the sub-page's sections to subsections of this one
        let body = String::from_utf8_lossy(&body).replace(".SH ", ".SS ");
        out.extend_from_slice(body.as_bytes());
    }
    writeln!(out, ".SH \"EXIT STATUS\"")?;
    writeln!(
        out,
        "0 done; 1 a host failed, was unreachable or was rolled back; 2 bad usage or an invalid inventory (nothing contacted); 3 with apply --check --detailed-exitcode: changes are pending."
    )?;
    man.render_version_section(out)?;
    Ok(())
}

pub(super) fn render(path: &Path, roles_path: Option<&Path>, out: &Path) -> Result<u8> {
    let roles = Roles::load(RoleSource::resolve(roles_path, path))?;
    let p = planned(path, true)?;
    let keys = desired::fresh_keys(&p.topology);
    let hosts = crate::hosts::render::render_offline(&roles, &p.topology, &keys)?;
    let count = write_tree(out, &hosts)?;
    eprintln!(
        "rendered {count} files for {} nodes into {} (private keys are fresh previews: apply keeps each node's own key)",
        hosts.len(),
        out.display()
    );
    Ok(EXIT_OK)
}

/// Writes every present file as `out/<node>/<abs path>` with its mode, on every core.
/// Returns how many files were written.
pub fn write_tree(out: &Path, hosts: &[desired::HostFiles]) -> Result<usize> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let chunk = hosts.len().div_ceil(threads).max(1);
    let results: Vec<Result<usize>> = std::thread::scope(|s| {
        let handles: Vec<_> = hosts
            .chunks(chunk)
            .map(|c| {
                s.spawn(move || {
                    let mut made = std::collections::HashSet::new();
                    let mut n = 0;
                    for (node, files) in c {
                        for f in files {
                            if let FileState::Present { content, mode } = &f.state {
                                write_rendered(out, node, &f.path, content, *mode, &mut made)?;
                                n += 1;
                            }
                        }
                    }
                    Ok(n)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("writer thread"))
            .collect()
    });
    results.into_iter().sum()
}

pub(super) fn write_rendered(
    out: &Path,
    node: &str,
    abs: &str,
    content: &str,
    mode: u32,
    made: &mut std::collections::HashSet<PathBuf>,
) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let target = out.join(node).join(abs.trim_start_matches('/'));
    let dir = target.parent().expect("file has a parent");
    if !made.contains(dir) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        made.insert(dir.to_path_buf());
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&target)
        .map_err(|e| Error::io(&target, e))?;
    f.write_all(content.as_bytes())
        .map_err(|e| Error::io(&target, e))?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(&target, e))?;
    Ok(())
}
