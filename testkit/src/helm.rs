//! Running the real `helm` (built from its Go module by `scripts/build-control-plane.sh`) on the
//! project's chart, to test what `helm lint`, `helm template` and `helm install` users see.

use std::{path::PathBuf, process::Command};

use crate::{
    HarnessError, KubectlOutput,
    dirs::{cache_dir, repo_root, temp_dir},
    process::executable,
};

const DEFAULT_VERSION: &str = "v3.22.0";

/// The project's chart, `charts/ficus`.
pub fn chart_dir() -> PathBuf {
    repo_root().join("charts/ficus")
}

/// `$FICUS_HELM`, else the cached `helm-<version>`; without one this is
/// [`HarnessError::Missing`] (tests skip locally and fail under CI).
pub fn helm_binary() -> Result<PathBuf, HarnessError> {
    if let Some(bin) = std::env::var_os("FICUS_HELM") {
        return Ok(bin.into());
    }
    let version =
        std::env::var("FICUS_HELM_VERSION").unwrap_or_else(|_| DEFAULT_VERSION.to_owned());
    let cached = cache_dir().join("bin").join(format!("helm-{version}"));
    if executable(&cached) {
        Ok(cached)
    } else {
        Err(HarnessError::Missing {
            component: "helm".into(),
            reason: format!(
                "{} not found: run scripts/build-control-plane.sh",
                cached.display()
            ),
        })
    }
}

/// Runs `helm <args>` with a throwaway home (no repositories, no plugins, no cache of the
/// user's). A non-zero exit is not an error: check [`KubectlOutput::success`].
pub fn helm(args: &[&str]) -> Result<KubectlOutput, HarnessError> {
    let bin = helm_binary()?;
    let home = temp_dir()?;
    let output = Command::new(&bin)
        .args(args)
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .output()
        .map_err(HarnessError::io("running", &bin))?;
    Ok(KubectlOutput::new("helm", args, output))
}
