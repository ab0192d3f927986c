-- The receiver's archive: shares and their merged content, as opencode's share server keeps them.

CREATE TABLE share (
  id TEXT PRIMARY KEY,
  session_id TEXT NOT NULL,
  secret TEXT NOT NULL,
  url TEXT NOT NULL,
  sync_count INTEGER NOT NULL DEFAULT 0,
  time_created INTEGER NOT NULL,
  time_updated INTEGER NOT NULL
);
CREATE INDEX share_session_id_idx ON share (session_id);

-- One row per merge key, last write wins: `item_key` is opencode's key (`session`,
-- `message/<id>`, `part/<messageID>/<id>`, `session_diff`, `model`); `data` is the raw JSON
-- text as received so numbers keep their type.
CREATE TABLE share_item (
  share_id TEXT NOT NULL REFERENCES share (id) ON DELETE CASCADE,
  item_key TEXT NOT NULL,
  kind TEXT NOT NULL,
  data TEXT NOT NULL,
  time_updated INTEGER NOT NULL,
  PRIMARY KEY (share_id, item_key)
);

-- Batches already applied to a share (the sender's deterministic batch key), so a batch
-- re-sent after a lost acknowledgement changes nothing.
CREATE TABLE share_sync (
  share_id TEXT NOT NULL REFERENCES share (id) ON DELETE CASCADE,
  dedup_key TEXT NOT NULL,
  time_applied INTEGER NOT NULL,
  PRIMARY KEY (share_id, dedup_key)
);
