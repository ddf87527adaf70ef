//! Prints the Migration CRD as YAML: `cargo run -p ficus-operator --bin crdgen > crds/migration.yaml`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    print!("{}", ficus_operator::crd_yaml()?);
    Ok(())
}
