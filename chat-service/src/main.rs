//! chat-service: the system Ficus migrates (PostgreSQL -> ScyllaDB). The full service arrives with
//! its own issue; this binary only names itself so the workspace builds.
fn main() {
    println!("chat-service: not implemented yet (see docs/architecture.md)");
}
