//! Where the harness keeps files: throwaway temp dirs per server, the cache of installed
//! binaries, and the repository checkout.

use std::{
    env,
    path::{Path, PathBuf},
};

use tempfile::TempDir;

use crate::HarnessError;

/// Temp dirs are `ficus-e2e-<pid>-<random>`: the pid lets later runs clean up after killed ones.
const DIR_PREFIX: &str = "ficus-e2e-";

/// `$FICUS_CACHE`, else `~/.cache/ficus` (as in `scripts/build-control-plane.sh` and
/// `scripts/install-deps.sh`).
pub fn cache_dir() -> PathBuf {
    env::var_os("FICUS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            env::home_dir()
                .unwrap_or_else(|| PathBuf::from("/root"))
                .join(".cache/ficus")
        })
}

/// The repository root (for `crds/`, `examples/`, `charts/`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A fresh `ficus-e2e-<pid>-<random>` temp dir, after removing those of dead test binaries.
pub fn temp_dir() -> Result<TempDir, HarnessError> {
    let tmp = env::temp_dir();
    remove_stale_dirs(&tmp);
    tempfile::Builder::new()
        .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
        .tempdir()
        .map_err(HarnessError::io("creating a temp dir in", &tmp))
}

/// Removes temp dirs left by test binaries that were killed (e.g. by a CI timeout) before their
/// cleanup ran; each holds ~120 MB of etcd WAL. Best effort.
fn remove_stale_dirs(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(DIR_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH);
        if !alive {
            tracing::debug!(dir = %entry.path().display(), "removing stale harness dir");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
