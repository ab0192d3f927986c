-- A pending item lives for moments (captured, read, acknowledged), and a backfill writes and
-- deletes one per entity: kept in its primary key alone (WITHOUT ROWID), each costs one b-tree
-- instead of three. The time_created index served no query (those reading time_created either
-- filter by session, through the key, or count every row anyway).
CREATE TABLE pending_item_keyed (
  session_id TEXT NOT NULL,
  kind TEXT NOT NULL,                -- session | message | part
  item_id TEXT NOT NULL,
  version INTEGER NOT NULL,
  time_created INTEGER NOT NULL,
  PRIMARY KEY (session_id, kind, item_id)
) WITHOUT ROWID;
INSERT INTO pending_item_keyed (session_id, kind, item_id, version, time_created)
  SELECT session_id, kind, item_id, version, time_created FROM pending_item;
DROP TABLE pending_item;
ALTER TABLE pending_item_keyed RENAME TO pending_item;
