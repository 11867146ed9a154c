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

mod args;
mod hosts;
mod lab;
mod offline;
mod peering;
mod rotate;

pub use args::*;
use hosts::*;
use lab::*;
pub use offline::write_tree;
use offline::*;
use output::progress::CliProgress;
use peering::*;

/// Exit status: done.
pub const EXIT_OK: u8 = 0;
/// Exit status: a host failed (and anything else that went wrong at run time).
pub const EXIT_FAILED: u8 = 1;
/// Exit status: bad usage or an invalid inventory; nothing was contacted or touched.
pub const EXIT_INVALID: u8 = 2;

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
            guard,
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
                guard: guard.timeout(),
            },
        ),
        Command::RotateKeys {
            inv,
            roles,
            run,
            preshared,
            check,
            diff,
            detailed_exitcode,
            guard,
        } => rotate::rotate_keys(
            &inv.inventory,
            roles.roles_path.as_deref(),
            &run,
            preshared,
            ApplyFlags {
                check,
                diff,
                no_rollback: false,
                detailed_exitcode,
                timings: false,
                guard: guard.timeout(),
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

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Usage(format!("cannot start the async runtime: {e}")))
}
