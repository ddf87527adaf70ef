-- Push device tokens of a user. A deleted token stays as a tombstone (deleted = true) with the
-- time of its deletion: a write of the token applies only if it is later than the row's, so two
-- stores that receive the same writes in a different order agree.
create table if not exists device_token (
    user_id    integer     not null,
    token      text        not null,
    platform   text        not null,
    updated_at timestamptz not null,
    deleted    boolean     not null default false,
    primary key (user_id, token)
);
