//! Opening a session on the cluster: execution profile, address translation, keyspace check.

use super::*;

/// A session on the cluster of `config`, with its keyspace checked to exist; returns the
/// keyspace as tables are qualified with it (lowercase).
pub(crate) async fn open_session(config: &CqlConfig) -> StoreResult<(Session, String)> {
    let profile = ExecutionProfile::builder()
        .consistency(config.consistency)
        .request_timeout(Some(Duration::from_secs(5)))
        .build();
    let mut builder = SessionBuilder::new();
    if !config.address_map.is_empty() {
        builder = builder.address_translator(Arc::new(AddressMap(config.address_map.clone())));
    }
    let session = builder
        .known_nodes(&config.contact_points)
        .connection_timeout(Duration::from_secs(5))
        .default_execution_profile_handle(profile.into_handle())
        .build()
        .await
        .map_err(classify_session)?;
    // Table names are qualified with the keyspace (no `USE`: prepared statements and a
    // session keyspace are ambiguous, and Cassandra warns about it on every prepare).
    let keyspace = config.keyspace.to_ascii_lowercase();
    if keyspace.is_empty()
        || keyspace.len() > 48
        || !keyspace.starts_with(|c: char| c.is_ascii_alphabetic())
        || !keyspace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(StoreError::Internal(format!(
            "CQL keyspace {:?} is not a valid unquoted name (a letter, then letters, digits, _; at most 48)",
            config.keyspace
        )));
    }
    let found = session
        .query_unpaged(
            "SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = ?",
            (&keyspace,),
        )
        .await
        .map_err(classify)?;
    if first_row::<(String,)>(found)?.is_none() {
        return Err(StoreError::Internal(format!(
            "CQL keyspace {keyspace:?} does not exist: create it first (its replication is a deployment choice)"
        )));
    }
    Ok((session, keyspace))
}

/// `--cql-address-map`: listed broadcast addresses are replaced, any other is used as it is
/// (the driver's own map refuses unlisted addresses, which breaks a node whose broadcast
/// address is already reachable).
#[derive(Debug)]
pub(super) struct AddressMap(HashMap<SocketAddr, SocketAddr>);

#[async_trait::async_trait]
impl scylla::policies::address_translator::AddressTranslator for AddressMap {
    async fn translate_address(
        &self,
        peer: &scylla::policies::address_translator::UntranslatedPeer,
    ) -> Result<SocketAddr, scylla::errors::TranslationError> {
        let addr = peer.untranslated_address();
        Ok(self.0.get(&addr).copied().unwrap_or(addr))
    }
}
