-- Backfill checkpoints belong to one migration (`chat-service migrate --migration-id`, by default
-- FICUS_MIGRATION_ID, `<namespace>/<name>/<attempt>`), so a later Migration, or another attempt,
-- starts from scratch instead of skipping every range an earlier one completed. Runs without an
-- id are keyed by their dual-write start (`dual-write:<RFC 3339>`); rows written before this
-- migration keep the empty id and are not read again. `dual_write_started_at` is the start the
-- range was copied with: resuming a migration with another one is refused.
alter table backfill_checkpoint add column migration_id text not null default '';
alter table backfill_checkpoint add column dual_write_started_at timestamptz;
alter table backfill_checkpoint drop constraint backfill_checkpoint_pkey;
alter table backfill_checkpoint add primary key (migration_id, range_count, range_index);
