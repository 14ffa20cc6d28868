//! The `slipway` command: `slipway run` starts the operator, `slipway crd` prints the CRDs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use slipway::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "slipway",
    version,
    about = "Rolls out containerised apps to dev, staging and prod"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator: the Environment, Release and ScaledWorker controllers.
    Run {
        /// Address of the admin server (/live, /ready, /metrics).
        #[arg(long, env = "SLIPWAY_ADMIN_ADDR", default_value = "0.0.0.0:8080")]
        admin_addr: SocketAddr,
        /// Log format.
        #[arg(long, env = "SLIPWAY_LOG_FORMAT", value_enum, default_value = "human")]
        log_format: LogFormat,
        /// Watch only this namespace (default: all namespaces).
        #[arg(long, env = "SLIPWAY_NAMESPACE")]
        namespace: Option<String>,
        /// Reconcile only while holding a coordination.k8s.io Lease (for several replicas).
        #[arg(long, env = "SLIPWAY_LEADER_ELECT")]
        leader_elect: bool,
        /// Namespace of the leader Lease (default: POD_NAMESPACE, else `default`).
        #[arg(long, env = "SLIPWAY_LEADER_NAMESPACE")]
        leader_namespace: Option<String>,
        /// Name of the leader Lease.
        #[arg(long, env = "SLIPWAY_LEADER_LEASE", default_value = "slipway-leader")]
        leader_lease: String,
        /// Seconds a Lease lasts without renewal before another replica takes over.
        #[arg(long, default_value = "15")]
        leader_lease_seconds: u64,
        /// How many migration Jobs may run at once across all Releases; more Releases wait
        /// in `Pending` (reason MigrationQueued) and start in the order they asked. 0: no limit.
        #[arg(long, env = "SLIPWAY_MAX_CONCURRENT_MIGRATIONS", default_value = "50")]
        max_concurrent_migrations: usize,
        /// Log level (RUST_LOG, when set, wins).
        #[arg(long, env = "SLIPWAY_LOG_LEVEL", default_value = "info")]
        log_level: String,
    },
    /// Print the CustomResourceDefinitions as YAML, or write one file per kind.
    Crd {
        /// Write `<plural>.slipway.dev.yaml` files into this directory instead of printing.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd { out_dir } => match write_crds(out_dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("slipway crd: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Run {
            admin_addr,
            log_format,
            log_level,
            namespace,
            leader_elect,
            leader_namespace,
            leader_lease,
            leader_lease_seconds,
            max_concurrent_migrations,
        } => {
            telemetry::init(log_format, &log_level);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("slipway run: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let leader = leader_elect.then(|| slipway::leader::LeaderConfig {
                namespace: leader_namespace
                    .or_else(|| std::env::var("POD_NAMESPACE").ok())
                    .unwrap_or_else(|| "default".into()),
                lease_name: leader_lease,
                identity: std::env::var("POD_NAME")
                    .unwrap_or_else(|_| format!("{}-{}", hostname(), std::process::id())),
                lease_duration: std::time::Duration::from_secs(leader_lease_seconds.max(2)),
                renew_every: std::time::Duration::from_secs((leader_lease_seconds / 5).clamp(1, 5)),
            });
            match runtime.block_on(run(
                admin_addr,
                namespace,
                leader,
                max_concurrent_migrations,
            )) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("slipway run: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn run(
    admin_addr: SocketAddr,
    namespace: Option<String>,
    leader: Option<slipway::leader::LeaderConfig>,
    max_concurrent_migrations: usize,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let config = kube::Config::infer()
        .await
        .context("no Kubernetes configuration found (in-cluster service account or KUBECONFIG)")?;
    slipway::controller::run(
        config,
        slipway::controller::RunOptions {
            admin_addr,
            namespace,
            leader,
            max_concurrent_migrations,
        },
    )
    .await
}

fn write_crds(out_dir: Option<PathBuf>) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let crds = slipway::api::crds();
    match out_dir {
        None => {
            for crd in &crds {
                print!("{}", slipway::api::crd_yaml(crd));
            }
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for crd in &crds {
                let name = crd.metadata.name.clone().unwrap_or_default();
                let path = dir.join(format!("{name}.yaml"));
                std::fs::write(&path, slipway::api::crd_yaml(crd))
                    .with_context(|| format!("writing {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
        }
    }
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "slipway".into())
}
