//! `kubectl ficus`: a kubectl plugin (any `kubectl-ficus` on `PATH` is one) for the manual
//! controls of Migrations. See `kubectl ficus --help`.

use std::process::ExitCode;

use clap::Parser;
use ficus_operator::cli::{Cli, run};

#[tokio::main]
async fn main() -> ExitCode {
    // kube and the AWS SDK together enable two rustls back-ends: choose one explicitly.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    let client = match kube::Client::try_default().await {
        Ok(client) => client,
        Err(e) => {
            eprintln!(
                "error: cannot reach the Kubernetes API (KUBECONFIG or in-cluster config): {e}"
            );
            return ExitCode::FAILURE;
        }
    };
    let namespace = client.default_namespace().to_owned();
    match run(client, &namespace, cli).await {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", ficus_operator::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
