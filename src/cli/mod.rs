//! The command line: clap structs, one function per subcommand, exit status. Arguments are
//! resolved here once; nothing below reads flags.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::desired::{self, FileState};
use crate::error::{Diagnostic, Error, Result};
use crate::roles::{RoleSource, Roles};
use crate::topology::{self, Planned};
use crate::{inventory, output};

/// Exit status: done.
pub const EXIT_OK: u8 = 0;
/// Exit status: a host failed (and anything else that went wrong at run time).
pub const EXIT_FAILED: u8 = 1;
/// Exit status: bad usage or an invalid inventory; nothing was contacted or touched.
pub const EXIT_INVALID: u8 = 2;

/// wgprov: one Kubernetes cluster over many sites, joined by WireGuard.
#[derive(Debug, Parser)]
#[command(name = "wgprov", version, about)]
pub struct Cli {
    /// More detail on stderr.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// For people.
    Text,
    /// One JSON document on stdout.
    Json,
}

/// Output format of `status`: [`Format`]'s, or OpenMetrics text for Prometheus.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StatusFormat {
    /// For people.
    Text,
    /// One JSON document on stdout.
    Json,
    /// OpenMetrics text (Prometheus reads it too), `# EOF` last.
    Openmetrics,
}

/// Arguments every inventory command takes.
#[derive(Debug, clap::Args)]
pub struct InvArgs {
    /// The inventory file.
    #[arg(short = 'i', long = "inventory", value_name = "INV")]
    pub inventory: PathBuf,
}

/// Settings of commands that contact hosts (`F`: the formats the command prints).
#[derive(Debug, clap::Args)]
pub struct RunArgs<F: ValueEnum + Clone + Send + Sync + 'static = Format> {
    /// Only these hosts: a node name, a site name or a glob over node names (comma-separated).
    #[arg(short = 'l', long, value_name = "PATTERN")]
    pub limit: Option<String>,
    /// How many hosts work at once.
    #[arg(short = 'f', long, default_value_t = 50)]
    pub forks: usize,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: F,
    /// How SSH connections are made.
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// How SSH connections are made.
#[derive(Debug, clap::Args)]
pub struct ConnectArgs {
    /// Record unknown host keys in known_hosts instead of refusing them (trust on first use).
    #[arg(long)]
    pub accept_new_host_keys: bool,
    /// Seconds to connect, exchange keys and authenticate.
    #[arg(long, default_value_t = 15)]
    pub connect_timeout: u64,
    /// Seconds one remote step may take.
    #[arg(long, default_value_t = 120)]
    pub command_timeout: u64,
}

impl ConnectArgs {
    fn options(&self) -> crate::transport::ssh::SshOptions {
        crate::transport::ssh::SshOptions {
            accept_new_host_keys: self.accept_new_host_keys,
            connect_timeout: std::time::Duration::from_secs(self.connect_timeout.max(1)),
            command_timeout: std::time::Duration::from_secs(self.command_timeout.max(1)),
        }
    }
}

impl<F: ValueEnum + Clone + Send + Sync + 'static> RunArgs<F> {
    fn settings(&self, check: bool, no_rollback: bool) -> crate::apply::Settings {
        crate::apply::Settings {
            limit: self.limit.clone(),
            check,
            forks: self.forks.max(1),
            no_rollback,
            guard: None,
            stop: Default::default(),
            command_timeout: std::time::Duration::from_secs(self.connect.command_timeout.max(1)),
        }
    }

    fn connector(&self) -> std::sync::Arc<crate::fleet::SshConnector> {
        std::sync::Arc::new(crate::fleet::SshConnector::new(self.connect.options()))
    }
}

/// Where roles come from.
#[derive(Debug, clap::Args)]
pub struct RoleArgs {
    /// A directory of roles to use instead of the built-in ones.
    #[arg(long, value_name = "DIR")]
    pub roles_path: Option<PathBuf>,
}

/// The subcommands (fields are documented by their clap help).
#[derive(Debug, Subcommand)]
#[allow(missing_docs)]
pub enum Command {
    /// Load and check the inventory offline; print every problem.
    Validate {
        #[command(flatten)]
        inv: InvArgs,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Print the address plan and peer graph (offline).
    Plan {
        #[command(flatten)]
        inv: InvArgs,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Write every managed node's desired files under DIR/<node>/<path> (offline).
    Render {
        #[command(flatten)]
        inv: InvArgs,
        #[command(flatten)]
        roles: RoleArgs,
        /// Output directory.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Print the topology as Graphviz DOT, or SVG through Graphviz's `dot` (offline).
    Graph {
        #[command(flatten)]
        inv: InvArgs,
        /// dot: Graphviz source; svg: rendered by Graphviz `dot -Tsvg` (must be installed).
        #[arg(long, value_enum, default_value = "dot")]
        format: GraphFormat,
    },
    /// Gather facts over SSH, plan the whole network, show and apply the changes.
    Apply {
        #[command(flatten)]
        inv: InvArgs,
        #[command(flatten)]
        roles: RoleArgs,
        #[command(flatten)]
        run: RunArgs,
        /// Contact hosts, read, plan and compare; change nothing anywhere.
        #[arg(long)]
        check: bool,
        /// Show unified diffs of every file that changes (private keys redacted).
        #[arg(long)]
        diff: bool,
        /// Leave a host whose change failed as it is, for inspection.
        #[arg(long)]
        no_rollback: bool,
        /// With --check: exit 3 when changes are pending.
        #[arg(long)]
        detailed_exitcode: bool,
        /// Print per-host phase timings in the recap.
        #[arg(long)]
        timings: bool,
        /// Seconds a changed host waits for confirmation before it puts itself back.
        #[arg(long, default_value_t = 90, value_name = "SECS")]
        confirm_timeout: u64,
        /// No health gate, no dead-man, no confirmation (labs and emergencies).
        #[arg(long)]
        no_guard: bool,
    },
    /// Put back the files of the last apply as they were before it, and re-run the handlers.
    Rollback {
        #[command(flatten)]
        inv: InvArgs,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Live mesh health from every node (handshakes, pings over the interface, forwarding,
    /// drift) and the problems found, each naming its culprit.
    Status {
        #[command(flatten)]
        inv: InvArgs,
        #[command(flatten)]
        run: RunArgs<StatusFormat>,
        /// Instead of the report: the topology with each link coloured by its health (dot:
        /// Graphviz source; svg: rendered by Graphviz `dot -Tsvg`).
        #[arg(long, value_enum, value_name = "dot|svg")]
        picture: Option<GraphFormat>,
    },
    /// Print a peering card for SITE: the public facts a neighbour's inventory needs to peer
    /// with it (block, endpoint, listen port, its next-hop's public key, MTU) and the exact
    /// `[Peer]` section for a hub without wgprov. Reads the public key on the next-hop over SSH
    /// (`wg pubkey` there): no private key leaves it.
    Export {
        #[command(flatten)]
        inv: InvArgs,
        /// The site the card describes (a managed one).
        #[arg(long, value_name = "SITE")]
        site: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Add or update the site a peering card describes, as `managed: false`, in the inventory
    /// (comments and every other line kept). Refused with exit 2, nothing written, when the
    /// result would be invalid: a block that collides, a managed site of that name.
    Import {
        #[command(flatten)]
        inv: InvArgs,
        /// The card (`wgprov export` wrote it); `-` reads it from standard input.
        #[arg(value_name = "CARD")]
        card: PathBuf,
        /// The name the site gets here (default: the card's), when the card's is taken.
        #[arg(long = "as", value_name = "NAME")]
        name: Option<String>,
        /// Show the change to the inventory; write nothing.
        #[arg(long)]
        check: bool,
    },
    /// A local testbed of the inventory's sites in network namespaces (needs root).
    #[command(subcommand)]
    Lab(LabCommand),
    /// Print the inventory's JSON Schema (for editors: yaml-language-server).
    Schema,
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    Man,
}

/// Output format of `graph`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum GraphFormat {
    /// Graphviz source.
    Dot,
    /// SVG, rendered by Graphviz `dot`.
    Svg,
}

/// `wgprov lab …`.
#[derive(Debug, Subcommand)]
#[allow(missing_docs)]
pub enum LabCommand {
    /// Build the lab: internet, NAT routers with port-forwards, nodes with sshd, controller.
    Up {
        #[command(flatten)]
        inv: InvArgs,
        /// Prefix of every namespace, process and directory of the lab.
        #[arg(long, default_value = "lab")]
        prefix: String,
        /// Build SITE's router without the UDP port-forward (the "forgot the port-forward" case).
        #[arg(long = "no-port-forward", value_name = "SITE")]
        no_port_forward: Vec<String>,
        /// Also put the controller on SITE's LAN, like an operator's laptop (default route via
        /// the router, the WireGuard space via the next-hop); see `lab mesh-only`.
        #[arg(long, value_name = "SITE")]
        controller_at: Option<String>,
        /// Nodes are Debian booted under systemd-nspawn (systemd as PID 1, sshd, wireguard-go;
        /// `reboot` inside one brings it back); the image is built once by scripts/lab-image.
        #[arg(long)]
        systemd: bool,
    },
    /// Cut the controller's management path: from now on it reaches nodes only over its LAN
    /// leg (`up --controller-at`) and the other sites only through the mesh.
    MeshOnly {
        #[arg(long, default_value = "lab")]
        prefix: String,
    },
    /// Remove exactly what `up` made.
    Down {
        #[arg(long, default_value = "lab")]
        prefix: String,
    },
    /// Run a command inside a node, SITE-router, controller or internet.
    Exec {
        #[arg(long, default_value = "lab")]
        prefix: String,
        /// Node name, SITE-router, controller or internet.
        name: String,
        /// The command and its arguments (after --).
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// What exists, and which sshd are alive.
    Status {
        #[arg(long, default_value = "lab")]
        prefix: String,
    },
    /// Build a three-site lab from the built-in demo inventory, apply --check, apply, prove
    /// pings cross every pair of sites, show status, tear down.
    Demo {
        #[arg(long, default_value = "demo")]
        prefix: String,
        /// Nodes are Debian booted under systemd-nspawn (systemd as PID 1, sshd, wireguard-go;
        /// `reboot` inside one brings it back); the image is built once by scripts/lab-image.
        #[arg(long)]
        systemd: bool,
    },
}

/// Parses the process arguments, runs, and returns the exit status.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                EXIT_INVALID
            } else {
                EXIT_OK
            });
        }
    };
    ExitCode::from(run(cli))
}

/// The global `-v` count, set once by [`run`].
static VERBOSE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

fn verbose() -> u8 {
    VERBOSE.load(std::sync::atomic::Ordering::Relaxed)
}

/// With `-v`: per node, each SSH setting and where it came from (inventory, ssh config, default).
fn explain_ssh(inv: &inventory::Inventory) {
    if verbose() > 0 {
        eprint!("{}", inventory::sshconfig::explain(inv));
    }
}

/// Runs a parsed command line; returns the exit status.
pub fn run(cli: Cli) -> u8 {
    VERBOSE.store(cli.verbose, std::sync::atomic::Ordering::Relaxed);
    let result = match cli.command {
        Command::Validate { inv, format } => validate(&inv.inventory, format),
        Command::Plan { inv, format } => plan(&inv.inventory, format),
        Command::Render { inv, roles, out } => {
            render(&inv.inventory, roles.roles_path.as_deref(), &out)
        }
        Command::Graph { inv, format } => graph(&inv.inventory, format),
        Command::Apply {
            inv,
            roles,
            run,
            check,
            diff,
            no_rollback,
            detailed_exitcode,
            timings,
            confirm_timeout,
            no_guard,
        } => apply(
            &inv.inventory,
            roles.roles_path.as_deref(),
            &run,
            ApplyFlags {
                check,
                diff,
                no_rollback,
                detailed_exitcode,
                timings,
                guard: (!no_guard).then(|| std::time::Duration::from_secs(confirm_timeout.max(5))),
            },
        ),
        Command::Rollback { inv, run } => rollback(&inv.inventory, &run),
        Command::Status { inv, run, picture } => status(&inv.inventory, &run, picture),
        Command::Export { inv, site, connect } => export(&inv.inventory, &site, &connect),
        Command::Import {
            inv,
            card,
            name,
            check,
        } => import(&inv.inventory, &card, name.as_deref(), check),
        Command::Lab(l) => lab(l),
        Command::Schema => {
            println!("{}", inventory::schema::json_schema_text());
            Ok(EXIT_OK)
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "wgprov", &mut std::io::stdout());
            Ok(EXIT_OK)
        }
        Command::Man => man(),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            match e {
                Error::Invalid(_) | Error::Usage(_) | Error::Role { .. } => EXIT_INVALID,
                Error::Io { .. } | Error::Lab(_) | Error::Host { .. } => EXIT_FAILED,
            }
        }
    }
}

fn print_warnings(w: &[Diagnostic]) {
    let mut err = std::io::stderr().lock();
    for d in w {
        let _ = writeln!(err, "{d}");
    }
}

fn planned(path: &Path, write_lock: bool) -> Result<Planned> {
    let p = topology::plan_inventory(path, write_lock)?;
    print_warnings(&p.warnings);
    explain_ssh(&p.inventory);
    if p.lock_written {
        eprintln!("wrote {}", inventory::lock_path(path).display());
    }
    Ok(p)
}

fn validate(path: &Path, format: Format) -> Result<u8> {
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
                "{}: ok ({} sites, {} managed nodes)",
                path.display(),
                p.topology.sites.len(),
                p.topology.nodes.len()
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

fn plan(path: &Path, format: Format) -> Result<u8> {
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

fn graph(path: &Path, format: GraphFormat) -> Result<u8> {
    let p = planned(path, false)?;
    print_picture(&output::graph_dot(&p.topology), format)?;
    Ok(EXIT_OK)
}

/// Prints DOT as it is, or rendered to SVG by Graphviz.
fn print_picture(dot: &str, format: GraphFormat) -> Result<()> {
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
fn man() -> Result<u8> {
    use clap::CommandFactory;
    let cmd = Cli::command();
    let mut out = Vec::new();
    man_page(&cmd, &mut out).map_err(|e| Error::io("man page", e))?;
    std::io::stdout()
        .write_all(&out)
        .map_err(|e| Error::io("stdout", e))?;
    Ok(EXIT_OK)
}

fn man_page(cmd: &clap::Command, out: &mut Vec<u8>) -> std::io::Result<()> {
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

fn render(path: &Path, roles_path: Option<&Path>, out: &Path) -> Result<u8> {
    let roles = Roles::load(RoleSource::resolve(roles_path, path))?;
    let p = planned(path, true)?;
    let keys = desired::fresh_keys(&p.topology);
    let hosts = desired::render_offline(&roles, &p.topology, &keys)?;
    let count = write_tree(out, &hosts)?;
    eprintln!(
        "rendered {count} files for {} nodes into {} (private keys are fresh previews: apply keeps each node's own key)",
        hosts.len(),
        out.display()
    );
    Ok(EXIT_OK)
}

struct ApplyFlags {
    check: bool,
    diff: bool,
    no_rollback: bool,
    detailed_exitcode: bool,
    timings: bool,
    guard: Option<std::time::Duration>,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Usage(format!("cannot start the async runtime: {e}")))
}

/// Progress while hosts work: a spinner line per host with indicatif on a terminal; plain
/// lines when stderr is not one or `CI` is set; nothing for JSON.
struct CliProgress {
    bars: Option<(
        indicatif::MultiProgress,
        std::sync::Mutex<std::collections::HashMap<String, indicatif::ProgressBar>>,
    )>,
    plain: bool,
    /// `-v`: every step of every host, with the seconds since the run started (on stderr,
    /// whatever the format; it carries host names and step names only, never file contents).
    steps: Option<std::time::Instant>,
}

impl CliProgress {
    fn new(text: bool) -> Self {
        use std::io::IsTerminal;
        let tty = std::io::stderr().is_terminal() && std::env::var_os("CI").is_none();
        CliProgress {
            bars: (tty && text).then(|| (indicatif::MultiProgress::new(), Default::default())),
            plain: !tty && text,
            steps: (verbose() > 0).then(std::time::Instant::now),
        }
    }

    fn step(&self, line: &str) {
        if let Some(t) = self.steps {
            let line = format!("[{:7.3}s] {line}", t.elapsed().as_secs_f64());
            match &self.bars {
                Some((mp, _)) => {
                    let _ = mp.println(line);
                }
                None => eprintln!("{line}"),
            }
        }
    }
}

impl crate::fleet::Progress for CliProgress {
    fn phase(&self, host: &str, phase: &str) {
        self.step(&format!("{host}: {phase}"));
        if let Some((mp, bars)) = &self.bars {
            let mut bars = bars.lock().unwrap();
            let bar = bars.entry(host.to_string()).or_insert_with(|| {
                let b = mp.add(indicatif::ProgressBar::new_spinner());
                b.enable_steady_tick(std::time::Duration::from_millis(120));
                b
            });
            bar.set_message(format!("{host}: {phase}"));
        }
    }
    fn done(&self, host: &str, outcome: &str) {
        self.step(&format!("{host}: done, {outcome}"));
        if let Some((_, bars)) = &self.bars {
            if let Some(b) = bars.lock().unwrap().remove(host) {
                b.finish_and_clear();
            }
        } else if self.plain {
            eprintln!("{host}: {outcome}");
        }
    }
    fn note(&self, line: &str) {
        if let Some((mp, _)) = &self.bars {
            let _ = mp.println(line);
        } else if self.plain {
            eprintln!("{line}");
        } else {
            self.step(line);
        }
    }
}

fn print_report(report: &crate::apply::Report, format: Format, diff: bool, timings: bool) {
    match format {
        Format::Text => print!("{}", output::apply_text(report, diff, timings)),
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&output::apply_json(report)).expect("json")
        ),
    }
}

fn apply(path: &Path, roles_path: Option<&Path>, run: &RunArgs, f: ApplyFlags) -> Result<u8> {
    let roles = Roles::load(RoleSource::resolve(roles_path, path))?;
    let p = planned(path, !f.check)?;
    let mut settings = run.settings(f.check, f.no_rollback);
    settings.guard = f.guard;
    let progress = std::sync::Arc::new(CliProgress::new(run.format == Format::Text));
    let stop = settings.stop.clone();
    let report = runtime()?.block_on(async {
        // Ctrl-C (or SIGTERM): start no new host, let hosts in flight finish, put the change
        // back; a second one leaves at once (each changed host's dead-man still puts it back)
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            for i in 0..2 {
                tokio::select! {
                    r = tokio::signal::ctrl_c() => if r.is_err() { return },
                    _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
                }
                if i == 0 {
                    stop.store(true, std::sync::atomic::Ordering::SeqCst);
                    eprintln!("wgprov: stopping: no new host is started; hosts in flight finish, then every change is put back (again to leave at once)");
                } else {
                    eprintln!("wgprov: leaving now: each changed host's dead-man puts it back");
                    std::process::exit(130);
                }
            }
        });
        crate::apply::apply(&p, &roles, &settings, run.connector(), progress).await
    })?;
    print_report(&report, run.format, f.diff, f.timings || verbose() > 0);
    Ok(report.exit_code(f.detailed_exitcode))
}

fn rollback(path: &Path, run: &RunArgs) -> Result<u8> {
    let p = planned(path, false)?;
    let settings = run.settings(false, false);
    let progress = std::sync::Arc::new(CliProgress::new(run.format == Format::Text));
    let report = runtime()?.block_on(crate::apply::rollback(
        &p,
        &settings,
        run.connector(),
        progress,
    ))?;
    print_report(&report, run.format, false, false);
    Ok(report.exit_code(false))
}

fn status(path: &Path, run: &RunArgs<StatusFormat>, picture: Option<GraphFormat>) -> Result<u8> {
    let p = planned(path, false)?;
    let progress = std::sync::Arc::new(CliProgress::new(run.format == StatusFormat::Text));
    let report = runtime()?.block_on(crate::status::status(
        &p,
        run.forks.max(1),
        run.connector(),
        progress,
    ))?;
    match (picture, run.format) {
        (Some(f), _) => print_picture(
            &output::svg::health_dot(&p.topology, &report.picture_links()),
            f,
        )?,
        (None, StatusFormat::Text) => print!("{}", crate::status::text(&report)),
        (None, StatusFormat::Json) => {
            println!("{}", serde_json::to_string_pretty(&report).expect("json"))
        }
        (None, StatusFormat::Openmetrics) => print!("{}", output::openmetrics::status(&report)),
    }
    Ok(report.exit_code())
}

fn export(path: &Path, site: &str, connect: &ConnectArgs) -> Result<u8> {
    let p = planned(path, true)?;
    let topo = &p.topology;
    let s = topo.site(site).ok_or_else(|| {
        let names: Vec<&str> = topo.sites.iter().map(|s| s.name.as_str()).collect();
        Error::Usage(format!(
            "no site `{site}` in {} (its sites: {})",
            path.display(),
            names.join(", ")
        ))
    })?;
    if !s.managed {
        return Err(Error::Usage(format!(
            "site {site} is not managed by {}: its card comes from its owner",
            path.display()
        )));
    }
    let (key, whose, after) = if let (Some(_), Some(key)) = (&s.router_address, s.public_key) {
        // a hub router wgprov does not manage: its key is the inventory's
        (
            key,
            "its hub router's public key (from the inventory)".to_string(),
            ", and the router needs a peer for them (wgprov apply prints it)",
        )
    } else {
        let hub = s
            .next_hop
            .as_deref()
            .and_then(|n| topo.node(n))
            .ok_or_else(|| Error::Usage(format!("site {site} has no next-hop node")))?;
        let (key, warning) = runtime()?.block_on(crate::peering::hub_public_key(
            topo,
            hub,
            &connect.options(),
        ))?;
        if let Some(w) = warning {
            eprintln!("warning: {w}");
        }
        (key, format!("{}'s public key", hub.name), "")
    };
    let card = crate::peering::card_for(topo, site, key)?;
    print!("{}", card.to_yaml());
    eprintln!(
        "site {site}: card written with {whose}; it holds no secret. The other side runs: wgprov import -i THEIR-INVENTORY CARD{after}"
    );
    Ok(EXIT_OK)
}

fn import(path: &Path, card_path: &Path, name: Option<&str>, check: bool) -> Result<u8> {
    use crate::peering::import::{self, Action};
    let (card, src) = crate::peering::Card::read(card_path)?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Usage(format!("cannot read inventory {}: {e}", path.display())))?;
    let lock = inventory::lock::Lock::read(&inventory::lock_path(path))?;
    let out = import::plan(path, &text, &lock, &card, &src, name)?;
    for w in &out.warnings {
        eprintln!("warning: {w}");
    }
    let site = &out.site;
    if out.action == Action::Unchanged {
        println!(
            "{}: site {site} is already as the card says; nothing written",
            path.display()
        );
        return Ok(EXIT_OK);
    }
    let shown = path.display().to_string();
    print!(
        "{}",
        similar::TextDiff::from_lines(&text, &out.text)
            .unified_diff()
            .context_radius(2)
            .header(&shown, &shown)
    );
    if check {
        println!("--check: nothing written");
        return Ok(EXIT_OK);
    }
    import::write_atomic(path, &text, &out.text)?;
    let what = match out.action {
        Action::Added => format!(
            "added site {site} ({}) as managed: false",
            card.wireguard_cidr
        ),
        _ => format!("updated site {site}: {}", out.changes.join(", ")),
    };
    println!(
        "{}: {what}; `wgprov apply -i {}` gives every next-hop its peer",
        path.display(),
        path.display()
    );
    Ok(EXIT_OK)
}

fn lab(cmd: LabCommand) -> Result<u8> {
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

/// Set by SIGINT/SIGTERM during `lab demo`, so that the demo stops at the next step and still
/// tears its lab down.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    // only an atomic store: async-signal-safe
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

fn interrupted() -> Result<()> {
    if INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
        Err(Error::Lab("interrupted".into()))
    } else {
        Ok(())
    }
}

/// Removes the demo lab and its inventory however the demo ends.
struct DemoGuard {
    prefix: String,
    dir: PathBuf,
}

impl Drop for DemoGuard {
    fn drop(&mut self) {
        match crate::lab::down(&self.prefix) {
            Ok(r) => println!(
                "\n== lab down: removed {} namespaces, stopped {} processes",
                r.namespaces.len(),
                r.processes
            ),
            Err(e) => eprintln!("lab down {}: {e}", self.prefix),
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn lab_demo(prefix: &str, systemd: bool) -> Result<u8> {
    use crate::lab;
    let started = std::time::Instant::now();
    lab::check_prefix(prefix)?;
    lab::preflight()?;
    let dir = std::env::temp_dir().join(format!("wgprov-demo-{prefix}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let inv = dir.join("demo.yaml");
    std::fs::write(&inv, include_str!("../../inventories/demo.yaml"))
        .map_err(|e| Error::io(&inv, e))?;
    let p = topology::plan_inventory(&inv, true)?;
    let mut layout = lab::plan::plan(&p.inventory, &p.topology, prefix, &[], None)?;
    if systemd {
        lab::systemd::preflight(layout.nodes.len())?;
        layout.systemd = Some(lab::systemd::ensure_image()?);
    }
    println!(
        "== lab up: {} sites behind NAT, {} nodes {}, a controller",
        layout.routers.len(),
        layout.nodes.len(),
        if systemd {
            "booted under systemd-nspawn (Debian, systemd, sshd)"
        } else {
            "with sshd"
        }
    );
    // Ctrl-C stops the demo at the next step; the guard then tears the lab down
    // SAFETY: installs a handler that only stores to an atomic.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_interrupt as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            on_interrupt as *const () as libc::sighandler_t,
        );
    }
    let st = lab::up(&inv, &layout)?;
    let guard = DemoGuard {
        prefix: prefix.to_string(),
        dir: dir.clone(),
    };
    let exe = std::env::current_exe().map_err(|e| Error::io("current_exe", e))?;
    let exe = exe.display().to_string();
    let inv_s = inv.display().to_string();
    let in_controller = |args: &[&str]| -> Result<i32> {
        interrupted()?;
        let mut cmd = vec![exe.clone()];
        cmd.extend(args.iter().map(|a| a.to_string()));
        lab::exec(prefix, "controller", &cmd)
    };
    // a step of the demo: a wgprov command in the controller that must exit 0; its wall time
    let step = |title: &str, args: &[&str]| -> Result<std::time::Duration> {
        println!("\n== {title}");
        let t = std::time::Instant::now();
        let code = in_controller(args)?;
        if code != 0 {
            return Err(Error::Lab(format!("{title}: exited {code}")));
        }
        Ok(t.elapsed())
    };
    step(
        "wgprov apply --check --diff (from the controller)",
        &["apply", "-i", &inv_s, "--check", "--diff"],
    )?;
    let first = step("wgprov apply", &["apply", "-i", &inv_s])?;
    let second = step(
        "wgprov apply again: nothing to change",
        &["apply", "-i", &inv_s],
    )?;

    let nodes = &p.topology.nodes;
    // every pair of nodes in different sites pings over wg0; returns the pairs that did not
    let matrix = |title: &str| -> Result<(usize, Vec<String>)> {
        println!("\n== {title}");
        let mut failed = Vec::new();
        let mut crossed = 0;
        for a in nodes {
            for b in nodes.iter().filter(|b| b.site != a.site) {
                let ip = b.wireguard_ip.to_string();
                // bounded: a lost first handshake is retried by WireGuard after 5 s
                interrupted()?;
                let ok = (0..10).any(|_| {
                    !INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
                        && lab::command(
                            prefix,
                            &a.name,
                            &[
                                "ping".into(),
                                "-c".into(),
                                "1".into(),
                                "-W".into(),
                                "1".into(),
                                ip.clone(),
                            ],
                        )
                        .and_then(|mut c| {
                            c.stdout(std::process::Stdio::null())
                                .stderr(std::process::Stdio::null())
                                .status()
                                .map_err(|e| Error::Lab(e.to_string()))
                        })
                        .map(|s| s.success())
                        .unwrap_or_else(|_| {
                            // a machine still booting: wait before the next try
                            std::thread::sleep(std::time::Duration::from_secs(1));
                            false
                        })
                });
                println!(
                    "  {:<8} ({:<6}) -> {:<8} ({:<6}) {:<12} {}",
                    a.name,
                    a.site,
                    b.name,
                    b.site,
                    ip,
                    if ok { "ok" } else { "FAILED" }
                );
                if ok {
                    crossed += 1;
                } else {
                    failed.push(format!("{} -> {}", a.name, b.name));
                }
            }
        }
        Ok((crossed, failed))
    };
    let (mut crossed, mut failed) = matrix(&format!(
        "pings over {} between every pair of nodes in different sites",
        p.topology.network.interface
    ))?;
    if systemd {
        println!(
            "\n== reboot every node at once (systemctl reboot inside each); no apply after it"
        );
        let machine =
            |n: &str| lab::systemd::machine_pid(&lab::lab_dir(prefix).join("nodes").join(n));
        let before: Vec<Option<u32>> = nodes.iter().map(|n| machine(&n.name)).collect();
        let t = std::time::Instant::now();
        for n in nodes {
            interrupted()?;
            lab::exec(prefix, &n.name, &["systemctl".into(), "reboot".into()])?;
        }
        // bounded: every machine booted again, its wg0 brought up by systemd
        for (n, old) in nodes.iter().zip(before) {
            let deadline = t + std::time::Duration::from_secs(60);
            loop {
                interrupted()?;
                let pid = machine(&n.name);
                let up = pid.is_some()
                    && pid != old
                    && lab::command(
                        prefix,
                        &n.name,
                        &[
                            "systemctl".into(),
                            "is-active".into(),
                            "-q".into(),
                            "wg-quick@wg0".into(),
                        ],
                    )
                    .and_then(|mut c| c.status().map_err(|e| Error::Lab(e.to_string())))
                    .is_ok_and(|s| s.success());
                if up {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    return Err(Error::Lab(format!(
                        "{} did not come back within 60 s of its reboot",
                        n.name
                    )));
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
        println!(
            "  every node booted again, wg-quick@wg0 active, {:.1} s after the reboot",
            t.elapsed().as_secs_f64()
        );
        let (c, f) = matrix(&format!(
            "after the reboot: pings over {} between every pair of nodes in different sites",
            p.topology.network.interface
        ))?;
        println!(
            "  the mesh came back {:.1} s after the reboot",
            t.elapsed().as_secs_f64()
        );
        crossed += c;
        failed.extend(f);
    }
    println!("\n== wgprov status");
    let _ = in_controller(&["status", "-i", &inv_s]);
    drop(guard);
    println!(
        "\n== demo: {crossed}/{} cross-site pings crossed both NATs; first apply {:.2} s, no-change apply {:.2} s, whole demo {:.1} s (lab of {} namespaces)",
        crossed + failed.len(),
        first.as_secs_f64(),
        second.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        st.namespaces.len()
    );
    if failed.is_empty() {
        Ok(EXIT_OK)
    } else {
        eprintln!("pings that did not cross: {}", failed.join(", "));
        Ok(EXIT_FAILED)
    }
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

fn write_rendered(
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
