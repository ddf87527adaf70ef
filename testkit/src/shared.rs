//! One instance of a server per test binary, and names unique within it.

use std::{
    fs,
    sync::{
        Mutex, Once, OnceLock, PoisonError,
        atomic::{AtomicU32, Ordering},
    },
};

use crate::{HarnessError, server::TestServer};

/// The server in `cell`, started with `start` on first use and then handed to every caller.
///
/// It lives until the process exits: the kernel kills its processes then (see `process.rs`)
/// and an `atexit` hook removes its files. A failed start is cached too, so every test of the
/// binary reports the same error instead of retrying a slow start.
pub(crate) fn shared<T: TestServer + Send + Sync + 'static>(
    cell: &'static OnceLock<Result<T, HarnessError>>,
    start: impl FnOnce() -> Result<T, HarnessError>,
) -> Result<&'static T, HarnessError> {
    cell.get_or_init(|| {
        let started = start();
        if started.is_ok() {
            at_exit(move || {
                if let Some(Ok(server)) = cell.get() {
                    server.stop();
                    let _ = fs::remove_dir_all(server.dir());
                }
            });
        }
        started
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// Runs `hook` when the process exits normally (hooks run last-registered first).
fn at_exit(hook: impl FnOnce() + Send + 'static) {
    type Hook = Box<dyn FnOnce() + Send>;
    static HOOKS: Mutex<Vec<Hook>> = Mutex::new(Vec::new());
    static REGISTER: Once = Once::new();
    extern "C" fn run_hooks() {
        let hooks = std::mem::take(&mut *HOOKS.lock().unwrap_or_else(PoisonError::into_inner));
        for hook in hooks.into_iter().rev() {
            hook();
        }
    }
    REGISTER.call_once(|| {
        // SAFETY: registering a plain `extern "C" fn` with no captured state.
        unsafe { libc::atexit(run_hooks) };
    });
    HOOKS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Box::new(hook));
}

/// `<prefix><sep><pid><sep><n>`, unique within this test binary and unlikely to clash across
/// runs: lowercase ASCII letters, digits and `sep` only, at most `max_len` bytes, starting with
/// a letter (`pad` is put in front of a prefix that does not, or is empty).
pub fn unique_name(prefix: &str, sep: char, max_len: usize, pad: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let suffix = format!("{sep}{:x}{sep}{n}", std::process::id());
    let cleaned: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                sep
            }
        })
        .collect();
    let cleaned = cleaned.trim_matches(sep);
    let prefix = match cleaned.chars().next() {
        Some(c) if c.is_ascii_alphabetic() => cleaned.to_owned(),
        _ => format!("{pad}{cleaned}"),
    };
    let room = max_len.saturating_sub(suffix.len());
    let prefix: String = prefix.chars().take(room).collect();
    format!("{}{suffix}", prefix.trim_end_matches(sep))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_safe_unique_and_bounded() {
        let a = unique_name("Chat Service/messages", '_', 48, "ks");
        let b = unique_name("Chat Service/messages", '_', 48, "ks");
        assert_ne!(a, b);
        assert!(a.starts_with("chat_service_messages_"), "{a}");
        assert!(unique_name("9lives", '_', 48, "ks").starts_with("ks9lives_"));
        assert!(unique_name("", '-', 63, "ns").starts_with("ns-"));
        for (sep, max) in [('_', 48), ('_', 63), ('-', 63)] {
            for prefix in ["", "9lives", "--x--", &"x".repeat(100), "Ünïcode name"] {
                let name = unique_name(prefix, sep, max, "p");
                assert!(name.len() <= max, "{name}");
                assert!(name.starts_with(|c: char| c.is_ascii_lowercase()), "{name}");
                assert!(
                    name.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == sep),
                    "{name}"
                );
            }
        }
    }
}
