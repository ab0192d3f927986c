-- The change feed behind live share pages: every stored item carries the share's sequence
-- number at its last write, so "everything after N" is one indexed range, gap-free across
-- restarts and across processes writing the same archive.
ALTER TABLE share ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE share_item ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
CREATE INDEX share_item_seq_idx ON share_item (share_id, seq);
