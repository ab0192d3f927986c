-- The receiver's archive in PostgreSQL: the tables of the SQLite archive (migration/), change
-- feed included. Ids and merge keys compare byte by byte (COLLATE "C"), as in SQLite, so
-- items come back in the same order whatever the database's locale.

CREATE TABLE share (
  id text COLLATE "C" PRIMARY KEY,
  session_id text NOT NULL,
  secret text NOT NULL,
  url text NOT NULL,
  sync_count bigint NOT NULL DEFAULT 0,
  -- The change feed: the sequence number of the share's newest stored item.
  seq bigint NOT NULL DEFAULT 0,
  time_created bigint NOT NULL,
  time_updated bigint NOT NULL,
  -- Creation order, for shares of one session created in the same millisecond.
  created bigint GENERATED ALWAYS AS IDENTITY
);
CREATE INDEX share_session_id_idx ON share (session_id, time_created DESC, created DESC);

-- One row per merge key, last write wins; `data` is the JSON text as received (not jsonb,
-- which would reorder keys and drop duplicates); `seq` is the share's sequence number at the
-- item's last write.
CREATE TABLE share_item (
  share_id text COLLATE "C" NOT NULL REFERENCES share (id) ON DELETE CASCADE,
  item_key text COLLATE "C" NOT NULL,
  kind text NOT NULL,
  data text NOT NULL,
  time_updated bigint NOT NULL,
  seq bigint NOT NULL,
  PRIMARY KEY (share_id, item_key)
);
CREATE INDEX share_item_seq_idx ON share_item (share_id, seq);

-- Batches already applied to a share (the sender's batch key, as bytes: text cannot hold
-- every string a sender may send), newest DEDUP_KEYS_KEPT kept.
CREATE TABLE share_sync (
  share_id text COLLATE "C" NOT NULL REFERENCES share (id) ON DELETE CASCADE,
  dedup_key bytea NOT NULL,
  time_applied bigint NOT NULL,
  applied bigint GENERATED ALWAYS AS IDENTITY,
  PRIMARY KEY (share_id, dedup_key)
);
CREATE INDEX share_sync_applied_idx ON share_sync (share_id, applied);
