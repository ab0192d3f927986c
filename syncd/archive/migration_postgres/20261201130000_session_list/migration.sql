-- The session list (the front page of `syncd serve`): each share's summary, kept current by
-- every sync that carries its session or a message, read newest first along one index.
-- session_updated is NULL for shares stored before this migration: the store fills their
-- summaries in when it opens the archive (the rule lives in code: archive/base.py). Items
-- here always had sequence numbers (the change feed came with the first migration), so none
-- need numbering, unlike the SQLite archive's.
ALTER TABLE share
  ADD COLUMN title text NOT NULL DEFAULT '',
  ADD COLUMN directory text NOT NULL DEFAULT '',
  ADD COLUMN session_updated bigint,
  ADD COLUMN message_count bigint NOT NULL DEFAULT 0,
  ADD COLUMN cost double precision NOT NULL DEFAULT 0,
  ADD COLUMN tokens bigint NOT NULL DEFAULT 0;
CREATE INDEX share_session_list_idx ON share (session_updated, id);
