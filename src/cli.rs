//! Command line: one binary, one subcommand per role.

use clap::{Parser, Subcommand};

use crate::injector::InjectorArgs;
use crate::run::RunArgs;
use crate::sidecar::Args;

#[derive(Debug, Parser)]
#[command(
    name = "tandem",
    version,
    about = "A lean, Kubernetes-native distributed application runtime, drop-in compatible with Dapr"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar (the daprd equivalent); accepts daprd's flags.
    Sidecar(Box<Args>),
    /// Local development: a sidecar with embedded defaults next to your app (like `dapr run`).
    Run(Box<RunArgs>),
    /// The sidecar injector: a mutating admission webhook adding the sidecar to annotated pods.
    Injector(Box<InjectorArgs>),
}

impl Command {
    /// (log level, JSON logs) of the chosen subcommand.
    pub fn logging(&self) -> (&str, bool) {
        match self {
            Command::Sidecar(a) => (&a.log_level, a.log_as_json),
            Command::Run(r) => (&r.sidecar.log_level, r.sidecar.log_as_json),
            Command::Injector(i) => (&i.log_level, i.log_as_json),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn accepts_daprd_flag_names() {
        let cli = Cli::try_parse_from([
            "tandem",
            "sidecar",
            "--app-id",
            "a",
            "--app-port",
            "3000",
            "--components-path",
            "./c",
            "--resources-path",
            "./r",
            "--enable-metrics=false",
            "--log-as-json",
            "--dapr-listen-addresses",
            "127.0.0.1,::1",
            "--app-max-concurrency",
            "-1",
        ])
        .unwrap();
        let Command::Sidecar(a) = cli.command else {
            panic!("sidecar")
        };
        assert_eq!(a.resources_path, ["./c", "./r"]);
        assert!(!a.enable_metrics);
        assert!(a.log_as_json);
        assert_eq!(a.dapr_listen_addresses, ["127.0.0.1", "::1"]);
        assert_eq!(a.app_port, Some(3000));
    }

    #[test]
    fn run_takes_a_command_after_double_dash() {
        let cli = Cli::try_parse_from([
            "tandem", "run", "--app-id", "a", "--", "python3", "app.py", "--port", "1",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else { panic!("run") };
        assert_eq!(r.command, ["python3", "app.py", "--port", "1"]);
    }
}
