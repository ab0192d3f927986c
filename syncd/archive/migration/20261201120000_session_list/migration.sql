-- The session list (the front page of `syncd serve`): each share's summary, kept current by
-- every sync that carries its session or a message, read newest first along one index.
-- session_updated is NULL for shares stored before this migration: the store fills their
-- summaries in when it opens the archive (the rule lives in code: archive/base.py).
ALTER TABLE share ADD COLUMN title TEXT NOT NULL DEFAULT '';
ALTER TABLE share ADD COLUMN directory TEXT NOT NULL DEFAULT '';
ALTER TABLE share ADD COLUMN session_updated INTEGER;
ALTER TABLE share ADD COLUMN message_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE share ADD COLUMN cost REAL NOT NULL DEFAULT 0;
ALTER TABLE share ADD COLUMN tokens INTEGER NOT NULL DEFAULT 0;
CREATE INDEX share_session_list_idx ON share (session_updated, id);

-- Items stored before the change feed carry seq 0, which no reader asks for (it reads after
-- 0): number them after their share's newest, in the order they were first stored.
UPDATE share_item SET seq = numbered.seq
FROM (
  SELECT item.rowid AS item_rowid,
         share.seq + row_number() OVER (PARTITION BY item.share_id ORDER BY item.rowid) AS seq
  FROM share_item AS item JOIN share ON share.id = item.share_id
  WHERE item.seq = 0
) AS numbered
WHERE share_item.rowid = numbered.item_rowid;
UPDATE share SET seq = (SELECT max(seq) FROM share_item WHERE share_id = share.id)
WHERE EXISTS (SELECT 1 FROM share_item WHERE share_id = share.id AND seq > share.seq);
