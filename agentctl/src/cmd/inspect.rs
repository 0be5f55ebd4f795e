//! `agentctl inspect POD`.

use std::process::ExitCode;

use crate::Cli;

/// Arguments of `inspect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// `name` (namespace default) or `namespace/name`.
    pub pod: String,
}

/// Prints the pod (JSON by default; YAML with `-o yaml`), its manifest errors on stderr.
pub async fn run(cli: &Cli, a: &Args) -> anyhow::Result<ExitCode> {
    let r = cli.connect().await?.inspect_pod(&a.pod).await?;
    let pod: serde_json::Value = serde_json::from_str(&r.pod_json)?;
    match cli.output {
        crate::Format::Yaml => print!("{}", serde_yaml_ng::to_string(&pod)?),
        crate::Format::Json | crate::Format::Table => {
            println!("{}", serde_json::to_string_pretty(&pod)?)
        }
    }
    for e in &r.manifest_errors {
        eprintln!("manifest {}: {}", e.path, e.message);
    }
    Ok(ExitCode::SUCCESS)
}
