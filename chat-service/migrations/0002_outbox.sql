-- Transactional outbox of the migration router (store/outbox.rs): secondary writes that failed,
-- were skipped (store down), or are in flight (written with the primary write in one
-- transaction and deleted once the secondary accepted it). Lives in the legacy PostgreSQL.

create table outbox (
    id              bigserial   primary key,
    -- The store the write is for.
    target          text        not null check (target in ('legacy', 'new')),
    -- Ordering key: a room's entries replay in id order (null: no room known, unordered).
    room_id         uuid,
    op              text        not null,
    -- The write's arguments (store/outbox.rs `WriteOp`); replaying is idempotent by id.
    payload         jsonb       not null,
    attempts        integer     not null default 0,
    next_attempt_at timestamptz not null default now(),
    created_at      timestamptz not null default now(),
    last_error      text
);

create index outbox_room_order on outbox (target, room_id, id);
create index outbox_due on outbox (next_attempt_at);

create table outbox_dead_letter (
    id              bigint      primary key,
    target          text        not null,
    room_id         uuid,
    op              text        not null,
    payload         jsonb       not null,
    attempts        integer     not null,
    created_at      timestamptz not null,
    last_error      text,
    dead_at         timestamptz not null default now()
);
