//! The command line as clap reads it: every subcommand, its flags and their defaults; and how
//! the flags that reach hosts become settings.

use super::*;

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
    pub(super) fn options(&self) -> crate::transport::ssh::SshOptions {
        crate::transport::ssh::SshOptions {
            accept_new_host_keys: self.accept_new_host_keys,
            connect_timeout: std::time::Duration::from_secs(self.connect_timeout.max(1)),
            command_timeout: std::time::Duration::from_secs(self.command_timeout.max(1)),
        }
    }
}

impl<F: ValueEnum + Clone + Send + Sync + 'static> RunArgs<F> {
    pub(super) fn settings(&self, no_rollback: bool) -> crate::apply::Settings {
        crate::apply::Settings {
            limit: self.limit.clone(),
            forks: self.forks.max(1),
            no_rollback,
            guard: None,
            stop: Default::default(),
            command_timeout: std::time::Duration::from_secs(self.connect.command_timeout.max(1)),
        }
    }

    pub(super) fn connector(&self) -> std::sync::Arc<crate::fleet::SshConnector> {
        std::sync::Arc::new(crate::fleet::SshConnector::new(self.connect.options()))
    }
}

/// The guard of a changing run.
#[derive(Debug, clap::Args)]
pub struct GuardArgs {
    /// Seconds a changed host waits for confirmation before it puts itself back.
    #[arg(long, default_value_t = 90, value_name = "SECS")]
    pub confirm_timeout: u64,
    /// No health gate, no dead-man, no confirmation (labs and emergencies).
    #[arg(long)]
    pub no_guard: bool,
}

impl GuardArgs {
    /// The confirmation timeout (at least 5 s), or `None` with `--no-guard`.
    pub fn timeout(&self) -> Option<std::time::Duration> {
        (!self.no_guard).then(|| std::time::Duration::from_secs(self.confirm_timeout.max(5)))
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
    /// Write every managed node's desired files under `DIR/<node>/<path>` (offline).
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
        #[command(flatten)]
        guard: GuardArgs,
    },
    /// New WireGuard key pairs for the nodes --limit selects (every node without it), and their
    /// new public keys on every peer, in one guarded run (the interfaces are not restarted).
    RotateKeys {
        #[command(flatten)]
        inv: InvArgs,
        #[command(flatten)]
        roles: RoleArgs,
        #[command(flatten)]
        run: RunArgs,
        /// Renew the preshared keys of those nodes' links too.
        #[arg(long)]
        preshared: bool,
        /// Contact hosts and show which keys would change (names only); change nothing.
        #[arg(long)]
        check: bool,
        /// Show unified diffs of every file that changes (keys redacted).
        #[arg(long)]
        diff: bool,
        /// With --check: exit 3 when keys would change.
        #[arg(long)]
        detailed_exitcode: bool,
        #[command(flatten)]
        guard: GuardArgs,
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
