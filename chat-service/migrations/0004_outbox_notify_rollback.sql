-- Wakes the outbox replayers (store/outbox.rs) through LISTEN/NOTIFY instead of polling: an
-- entry that is due at once (inserted or pushed back with no delay, e.g. a write skipped while
-- its store was down, a write queued behind its room's pending entries, a redriven dead letter)
-- notifies channel `chat_outbox` when its transaction commits. Entries due later are found by
-- the replayer's own timer (it sleeps until the earliest `next_attempt_at`).
create function outbox_notify() returns trigger language plpgsql as $$
begin
    if new.next_attempt_at <= now() then
        perform pg_notify('chat_outbox', new.target);
    end if;
    return new;
end
$$;

create trigger outbox_notify after insert or update of next_attempt_at on outbox
    for each row execute function outbox_notify();

-- Progress of `chat-service rollback` (src/rollback.rs): copying the new store's writes of a time
-- window back into legacy. One row per checkpoint key (the migration's id when the operator runs
-- it); `last_token` is the CQL token of the last room fully copied.
create table rollback_checkpoint (
    checkpoint_key text        primary key,
    since          timestamptz not null,
    until          timestamptz not null,
    last_token     bigint,
    rooms_done     bigint      not null default 0,
    started_at     timestamptz not null default now(),
    updated_at     timestamptz not null default now(),
    completed_at   timestamptz
);
