//! The local demo: starts a real control plane, installs the CRD, runs the operator binary,
//! applies `examples/demo-local.yaml` and shows the Migration moving through its phases.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ficus_e2e::operator::install_crds;
use ficus_testkit::{ControlPlane, repo_root};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    ficus_testkit::init();
    println!("==> starting etcd + kube-apiserver on loopback");
    let cp = ControlPlane::start()?;
    println!("    kubeconfig: {}", cp.kubeconfig_path().display());
    println!("==> installing the Migration CRD (kubectl apply -f crds/)");
    install_crds(&cp)?;

    let operator_bin = std::env::var("FICUS_OPERATOR_BIN")
        .map(Into::into)
        .unwrap_or_else(|_| {
            std::env::current_exe()
                .map(|p| p.with_file_name("ficus-operator"))
                .unwrap_or_default()
        });
    let log_path = cp.dir().join("operator.log");
    let log_file = std::fs::File::create(&log_path)?;
    println!(
        "==> running {} (log: {})",
        operator_bin.display(),
        log_path.display()
    );
    let mut operator = Command::new(&operator_bin)
        .args(["--http-addr", "127.0.0.1:0", "--lease-namespace", "default"])
        .env("KUBECONFIG", cp.kubeconfig_path())
        .env("POD_NAME", "ficus-demo")
        .stdout(Stdio::from(log_file.try_clone()?))
        .stderr(Stdio::from(log_file))
        .spawn()
        .map_err(|e| {
            format!(
                "cannot start {}: {e}; build it with `cargo build -p ficus-operator`",
                operator_bin.display()
            )
        })?;

    let example = repo_root().join("examples/demo-local.yaml");
    println!("==> kubectl apply -f examples/demo-local.yaml");
    let out = cp.kubectl(&["apply", "-f", &example.to_string_lossy()])?;
    print!("{}", out.stdout);
    if !out.success() {
        return Err(format!("apply failed: {out}").into());
    }

    println!("==> kubectl get migrations -w (and the flag ConfigMap the services read)");
    let start = Instant::now();
    let mut last = String::new();
    let mut completed = false;
    while start.elapsed() < Duration::from_secs(120) {
        let table = cp
            .kubectl(&["get", "migrations", "-n", "default", "--no-headers"])?
            .stdout;
        let flags = cp
            .kubectl(&[
                "get",
                "configmap",
                "demo-migration-flags",
                "-n",
                "default",
                "-o",
                "jsonpath={.data}",
            ])?
            .stdout;
        let line = format!(
            "{}   flags: {}",
            table.trim(),
            if flags.is_empty() {
                "(not written yet)"
            } else {
                &flags
            }
        );
        let key: String = table
            .split_whitespace()
            .take(4)
            .collect::<Vec<_>>()
            .join(" ")
            + &flags;
        if key != last {
            println!("[{:>5.1}s] {line}", start.elapsed().as_secs_f32());
            last = key;
        }
        if table.contains("Completed") {
            completed = true;
            break;
        }
        if let Ok(Some(status)) = operator.try_wait() {
            // The log lives in the control plane's temp dir, removed on exit: show it now.
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!("the operator exited ({status}):\n{log}").into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    println!("==> kubectl describe migration demo (events)");
    let described = cp
        .kubectl(&["describe", "migration", "demo", "-n", "default"])?
        .stdout;
    if let Some(events) = described.find("Events:") {
        print!("{}", &described[events..]);
    }
    let _ = operator.kill();
    let _ = operator.wait();
    if completed {
        println!("==> the migration completed: the new system is primary, dual-write is off");
        Ok(())
    } else {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = log
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        Err(format!(
            "the demo migration did not complete within 120 s; operator log tail:\n{}",
            tail.join("\n")
        )
        .into())
    }
}
