//! Rebuilds the crate when a file under `migrations/` changes: `sqlx::migrate!` embeds the
//! migrations at compile time, and cargo does not watch that directory by itself (a new
//! migration would otherwise be missing from the binary until some Rust file changed).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
