//! Running the real `kubectl` against the control plane, to test what users will type.

use std::{
    fmt,
    io::{self, Write},
    process::{Command, ExitStatus, Output, Stdio},
};

use crate::{ControlPlane, HarnessError};

/// What one `kubectl` (or `helm`) run printed. `Display` renders everything, for assertion
/// messages.
#[derive(Debug, Clone)]
pub struct KubectlOutput {
    /// `kubectl` or `helm`.
    pub program: &'static str,
    pub args: Vec<String>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl KubectlOutput {
    pub(crate) fn new(program: &'static str, args: &[&str], output: Output) -> Self {
        Self {
            program,
            args: args.iter().map(|a| a.to_string()).collect(),
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    pub fn success(&self) -> bool {
        self.status.success()
    }
}

impl fmt::Display for KubectlOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} ({})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.program,
            self.args.join(" "),
            self.status,
            self.stdout,
            self.stderr
        )
    }
}

impl ControlPlane {
    /// Runs `kubectl --kubeconfig <admin> <args>`. A non-zero exit is not an error: check
    /// [`KubectlOutput::success`] so tests can assert on rejections too.
    ///
    /// The binary is `$FICUS_KUBECTL`, else the one `scripts/build-control-plane.sh` built
    /// beside kube-apiserver, else `kubectl` on `PATH`.
    pub fn kubectl(&self, args: &[&str]) -> Result<KubectlOutput, HarnessError> {
        self.run_kubectl(args, None)
    }

    /// Like [`kubectl`](Self::kubectl), for setup steps that must succeed: a non-zero exit is
    /// [`HarnessError::Command`] with the whole output.
    pub fn kubectl_ok(&self, args: &[&str]) -> Result<KubectlOutput, HarnessError> {
        let out = self.kubectl(args)?;
        if out.success() {
            Ok(out)
        } else {
            Err(HarnessError::Command(Box::new(out)))
        }
    }

    /// Like [`kubectl`](Self::kubectl) with `stdin` piped in, e.g. `apply -f -`.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Result<KubectlOutput, HarnessError> {
        self.run_kubectl(args, Some(stdin))
    }

    fn run_kubectl(
        &self,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<KubectlOutput, HarnessError> {
        let bin = kubectl_binary();
        let mut cmd = Command::new(&bin);
        cmd.arg("--kubeconfig")
            .arg(self.kubeconfig_path())
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd.spawn().map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => HarnessError::Missing {
                component: "kubectl".into(),
                reason: format!("`{bin}` not found on PATH: install kubectl or set FICUS_KUBECTL"),
            },
            _ => HarnessError::io("running", &bin)(e),
        })?;
        let output = (|| {
            let mut child = child;
            if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
                pipe.write_all(input.as_bytes())?;
            } // `pipe` dropped here: kubectl sees EOF.
            child.wait_with_output()
        })()
        .map_err(HarnessError::io("running", &bin))?;
        let out = KubectlOutput::new("kubectl", args, output);
        tracing::debug!(args = ?out.args, status = %out.status, "kubectl");
        Ok(out)
    }
}

/// `$FICUS_KUBECTL`, else the cached kubectl matching the API server, else `kubectl`.
pub fn kubectl_binary() -> String {
    if let Ok(bin) = std::env::var("FICUS_KUBECTL") {
        return bin;
    }
    let version = std::env::var("FICUS_KUBE_VERSION").unwrap_or_else(|_| "v1.35.4".into());
    let cached = crate::dirs::cache_dir()
        .join("bin")
        .join(format!("kubectl-{version}"));
    if cached.is_file() {
        cached.to_string_lossy().into_owned()
    } else {
        "kubectl".into()
    }
}
