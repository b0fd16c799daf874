use std::process::ExitCode;

use clap::Parser;
use tandem::cli::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tandem::sidecar::server::raise_open_file_limit();
    let cli = Cli::parse();
    let (level, json) = cli.command.logging();
    tandem::telemetry::init(level, json);
    let result = match cli.command {
        Command::Sidecar(args) => tandem::sidecar::run(*args).await.map(|()| ExitCode::SUCCESS),
        Command::Run(args) => tandem::run::run(*args).await,
        Command::Crds(args) => tandem::crdgen::run(args).map(|()| ExitCode::SUCCESS),
        Command::Operator(args) => tandem::operator::run(*args).await.map(|()| ExitCode::SUCCESS),
        Command::Injector(args) => tandem::injector::run(*args).await.map(|()| ExitCode::SUCCESS),
        Command::List(args) => tandem::run::verbs::list(args),
        Command::Stop(args) => tandem::run::verbs::stop(args).await,
        Command::Invoke(args) => tandem::run::verbs::invoke(args).await,
        Command::Publish(args) => tandem::run::verbs::publish(args).await,
        Command::Version(args) => tandem::run::verbs::version(args),
        Command::Completion { shell } => {
            tandem::cli::completion(shell);
            Ok(ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("tandem: {e:#}");
            ExitCode::FAILURE
        }
    }
}
