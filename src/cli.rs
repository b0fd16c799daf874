//! Command line: one binary, one subcommand per role.

use clap::{Parser, Subcommand};

use crate::crdgen::CrdsArgs;
use crate::injector::InjectorArgs;
use crate::operator::OperatorArgs;
use crate::run::RunArgs;
use crate::run::verbs::{InvokeArgs, ListArgs, PublishArgs, StopArgs, VersionArgs};
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
    /// Print the CustomResourceDefinitions of the Dapr kinds (or, with --write, refresh crds/ and the chart's copy).
    Crds(CrdsArgs),
    /// The Kubernetes operator: `<app-id>-dapr` Services, resource validation status, the sidecar API.
    Operator(Box<OperatorArgs>),
    /// The sidecar injector: a mutating admission webhook adding the sidecar to annotated pods.
    Injector(Box<InjectorArgs>),
    /// List the apps `tandem run` is running on this machine (like `dapr list`).
    List(ListArgs),
    /// Stop apps started with `tandem run`, by app id or run file (like `dapr stop`).
    Stop(StopArgs),
    /// Invoke a method of a running app through its sidecar (like `dapr invoke`).
    Invoke(InvokeArgs),
    /// Publish an event through a running app's sidecar (like `dapr publish`).
    Publish(PublishArgs),
    /// Print the CLI and runtime versions (like `dapr version`).
    Version(VersionArgs),
    /// Print a shell completion script: `source <(tandem completion bash)`.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

impl Command {
    /// (log level, JSON logs) of the chosen subcommand.
    pub fn logging(&self) -> (&str, bool) {
        match self {
            Command::Sidecar(a) => (&a.log_level, a.log_as_json),
            Command::Run(r) => (&r.sidecar.log_level, r.sidecar.log_as_json),
            Command::Crds(_) => ("warn", false),
            Command::Operator(o) => (&o.log_level, o.log_as_json),
            Command::Injector(i) => (&i.log_level, i.log_as_json),
            Command::List(_)
            | Command::Stop(_)
            | Command::Invoke(_)
            | Command::Publish(_)
            | Command::Version(_)
            | Command::Completion { .. } => ("warn", false),
        }
    }
}

/// `tandem completion <shell>`.
pub fn completion(shell: clap_complete::Shell) {
    use clap::CommandFactory;
    clap_complete::generate(shell, &mut Cli::command(), "tandem", &mut std::io::stdout());
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
    fn crds_prints_unless_asked_to_write() {
        let cli = Cli::try_parse_from(["tandem", "crds"]).unwrap();
        let Command::Crds(a) = cli.command else { panic!("crds") };
        assert!(!a.write);
        let cli = Cli::try_parse_from(["tandem", "crds", "--write", "--root", "/tmp/x"]).unwrap();
        let Command::Crds(a) = cli.command else { panic!("crds") };
        assert!(a.write);
        assert_eq!(a.root, std::path::Path::new("/tmp/x"));
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

    #[test]
    fn run_takes_the_dapr_clis_short_flags_and_a_run_file() {
        let cli = Cli::try_parse_from([
            "tandem",
            "run",
            "-a",
            "a",
            "-p",
            "3000",
            "-H",
            "3501",
            "-G",
            "50002",
            "-I",
            "50003",
            "-M",
            "9091",
            "-P",
            "grpc",
            "-c",
            "config.yaml",
            "-d",
            "./res",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else { panic!("run") };
        let s = &r.sidecar;
        assert_eq!(
            (s.app_id.as_str(), s.app_port, s.dapr_http_port),
            ("a", Some(3000), Some(3501))
        );
        assert_eq!(
            (s.dapr_grpc_port, s.dapr_internal_grpc_port, s.metrics_port),
            (Some(50002), Some(50003), Some(9091))
        );
        assert_eq!((s.app_protocol.as_str(), s.config.as_str()), ("grpc", "config.yaml"));
        assert_eq!(s.resources_path, ["./res"]);
        let cli = Cli::try_parse_from(["tandem", "run", "-f", "."]).unwrap();
        let Command::Run(r) = cli.command else { panic!("run") };
        assert_eq!(r.run_file.as_deref(), Some("."));
    }

    #[test]
    fn the_everyday_verbs_take_the_dapr_clis_flags() {
        let cli = Cli::try_parse_from(["tandem", "stop", "--app-id", "a,b", "c"]).unwrap();
        let Command::Stop(s) = cli.command else { panic!("stop") };
        assert_eq!(
            (s.app_id, s.ids),
            (vec!["a".to_string(), "b".into()], vec!["c".to_string()])
        );
        let cli = Cli::try_parse_from(["tandem", "invoke", "-a", "x", "-m", "m", "-d", "{}", "-v", "GET"]).unwrap();
        let Command::Invoke(i) = cli.command else {
            panic!("invoke")
        };
        assert_eq!(
            (i.app_id.as_str(), i.method.as_str(), i.verb.as_str()),
            ("x", "m", "GET")
        );
        assert!(Cli::try_parse_from(["tandem", "invoke", "-a", "x", "-m", "m", "-d", "{}", "-f", "f"]).is_err());
        let cli = Cli::try_parse_from([
            "tandem",
            "publish",
            "-i",
            "x",
            "-p",
            "ps",
            "-t",
            "t",
            "-d",
            "1",
            "-m",
            r#"{"rawPayload":"true"}"#,
        ])
        .unwrap();
        let Command::Publish(p) = cli.command else {
            panic!("publish")
        };
        assert_eq!((p.pubsub.as_str(), p.topic.as_str()), ("ps", "t"));
        assert!(Cli::try_parse_from(["tandem", "list", "-o", "json"]).is_ok());
        assert!(Cli::try_parse_from(["tandem", "list", "-o", "xml"]).is_err());
        assert!(Cli::try_parse_from(["tandem", "completion", "zsh"]).is_ok());
    }

    #[test]
    fn operator_flags() {
        let cli = Cli::try_parse_from([
            "tandem",
            "operator",
            "--api-port",
            "6501",
            "--health-port",
            "8081",
            "--leader-elect",
            "--tls-cert-file",
            "/tls/tls.crt",
            "--tls-key-file",
            "/tls/tls.key",
        ])
        .unwrap();
        let Command::Operator(o) = cli.command else {
            panic!("operator")
        };
        assert_eq!((o.api_port, o.health_port, o.leader_elect), (6501, 8081, true));
        assert_eq!(o.tls_key_file.as_deref(), Some(std::path::Path::new("/tls/tls.key")));
        assert_eq!(o.token_audience, "tandem-api");
        let err = Cli::try_parse_from(["tandem", "operator", "--tls-cert-file", "c"]).unwrap_err();
        assert!(err.to_string().contains("--tls-key-file"), "{err}");
    }
}
