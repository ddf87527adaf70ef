-- When a member last pinned or unpinned the room. A pin applies only if it is not older than the
-- last one, so two stores that receive the same pins in a different order agree (the CQL store
-- gets the same rule from its write timestamps).
alter table room_member add column if not exists pinned_at timestamptz;
