-- chat-service schema (PostgreSQL). Layout follows the original system (room, room_member,
-- room_message) so its data and tools carry over.

create table room (
    id          uuid primary key,
    name        varchar(255) not null default '',
    type        varchar(16)  not null check (type in ('group', 'p2p')),
    created_by  integer      not null,
    created_at  timestamptz  not null
);

create table room_member (
    room_id      uuid        not null references room (id) on delete cascade,
    user_id      integer     not null,
    role         varchar(16) not null default 'member' check (role in ('owner', 'member')),
    is_pinned    boolean     not null default false,
    joined_at    timestamptz not null,
    -- Newest message this member has marked read (the unread-count boundary).
    last_read_at timestamptz,
    removed_at   timestamptz,
    primary key (room_id, user_id)
);

-- "My rooms": current memberships by user.
create index room_member_user_active on room_member (user_id, room_id) where removed_at is null;

create table room_message (
    -- Time-based UUID (v1), the same value ScyllaDB uses as the timeuuid clustering key.
    id          uuid        primary key,
    room_id     uuid        not null references room (id) on delete cascade,
    sender_id   integer     not null,
    -- AES-256-GCM: nonce (12 bytes) || ciphertext || tag (16 bytes). Never plaintext.
    content     bytea       not null,
    type        varchar(32) not null,
    created_at  timestamptz not null,
    deleted_at  timestamptz
);

-- History: newest first per room. `id` is the tie-breaker of the cursor's row comparison
-- `(created_at, id) < (...)`, so with it in the index a page is one index range scan.
create index room_message_room_created on room_message (room_id, created_at desc, id desc) where deleted_at is null;

create table room_message_reaction (
    message_id  uuid        not null references room_message (id) on delete cascade,
    user_id     integer     not null,
    reaction    varchar(64) not null,
    created_at  timestamptz not null,
    primary key (message_id, user_id, reaction)
);

-- Read receipts: one row per (message, reader).
create table room_message_read (
    message_id  uuid        not null references room_message (id) on delete cascade,
    user_id     integer     not null,
    read_at     timestamptz not null,
    primary key (message_id, user_id)
);
