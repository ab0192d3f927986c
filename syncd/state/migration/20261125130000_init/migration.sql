-- syncd's own state: where the source is, what is pending, the shares it made, what failed.

-- Settings the rest of the state depends on (the target the shares and cursors belong to).
CREATE TABLE meta (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL
);

-- Per opencode session: how far the source has been captured into pending_item, and how
-- delivery is going.
CREATE TABLE session_cursor (
  session_id TEXT PRIMARY KEY,
  journal_seq INTEGER,               -- last event_sequence.seq captured (journal mode)
  time_updated INTEGER,              -- newest row time_updated captured (table mode)
  diff_hash TEXT,                    -- hash of the last session_diff delivered (server appends)
  time_last_delivery INTEGER,
  last_error TEXT,
  attempts INTEGER NOT NULL DEFAULT 0
);

-- Entities whose newest state the receiver has not acknowledged. The row content is read
-- from opencode at send time, so the newest state always wins; `version` grows with every
-- capture so an acknowledgement never removes a capture newer than the batch it covered.
CREATE TABLE pending_item (
  session_id TEXT NOT NULL,
  kind TEXT NOT NULL,                -- session | message | part
  item_id TEXT NOT NULL,
  version INTEGER NOT NULL,
  time_created INTEGER NOT NULL,
  PRIMARY KEY (session_id, kind, item_id)
);
CREATE INDEX pending_item_time_created_idx ON pending_item (time_created);

-- Share credentials per session and target (a receiver origin and its kind of share).
CREATE TABLE share (
  session_id TEXT NOT NULL,
  target TEXT NOT NULL,
  share_id TEXT NOT NULL,
  secret TEXT NOT NULL,
  url TEXT NOT NULL,
  recreated INTEGER NOT NULL DEFAULT 0,
  time_created INTEGER NOT NULL,
  PRIMARY KEY (session_id, target)
);

-- Items the receiver refused for good, or rows that could not be read: never dropped silently.
CREATE TABLE dead_letter (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  session_id TEXT NOT NULL,
  kind TEXT NOT NULL,
  item_id TEXT NOT NULL,
  payload TEXT,
  reason TEXT NOT NULL,
  time_created INTEGER NOT NULL
);
CREATE INDEX dead_letter_session_id_idx ON dead_letter (session_id);
