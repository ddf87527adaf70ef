//! `crds/migration.yaml` must be what the Rust types generate: users apply that file.

#[test]
fn checked_in_crd_matches_the_rust_types() {
    let generated = ficus_operator::crd_yaml().expect("the CRD serializes");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/migration.yaml");
    let checked_in = std::fs::read_to_string(&path).expect("crds/migration.yaml exists");
    assert!(
        generated == checked_in,
        "crds/migration.yaml is stale: run `cargo run -p ficus-operator --bin crdgen > crds/migration.yaml`"
    );
}
