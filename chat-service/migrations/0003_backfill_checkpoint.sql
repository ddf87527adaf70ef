-- Progress of `chat-service migrate` (the backfill into the new store, src/backfill.rs): one row
-- per key range of room ids (the id space split into `range_count` equal ranges). A range is
-- copied room by room in id order; `last_room_id` is the last room fully copied, so a killed run
-- resumes after it, and a range with `completed_at` is skipped.

create table backfill_checkpoint (
    range_count   integer     not null,
    range_index   integer     not null,
    last_room_id  uuid,
    rooms_done    bigint      not null default 0,
    messages_done bigint      not null default 0,
    started_at    timestamptz not null default now(),
    updated_at    timestamptz not null default now(),
    completed_at  timestamptz,
    primary key (range_count, range_index)
);
