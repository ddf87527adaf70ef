//! `crds/migration.yaml` and the chart's copy must be what the Rust types generate: users apply
//! the first with kubectl and get the second from `helm install`.

#[test]
fn checked_in_crds_match_the_rust_types() {
    let generated = ficus_operator::crd_yaml().expect("the CRD serializes");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for file in ["crds/migration.yaml", "charts/ficus/crds/migration.yaml"] {
        let checked_in = std::fs::read_to_string(root.join(file))
            .unwrap_or_else(|e| panic!("{file} cannot be read: {e}"));
        assert!(
            generated == checked_in,
            "{file} is stale: run `cargo run -p ficus-operator --bin crdgen > {file}`"
        );
    }
}
