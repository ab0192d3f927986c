-- Table mode's last read of each session (opencode without a journal), written with the
-- capture it found: a restart reads again from where that read began, measured by the boot's
-- clock when it is the same boot, and re-sends none of the stamps it kept.
ALTER TABLE session_cursor ADD COLUMN read_wall INTEGER;   -- when it began, wall clock ms
ALTER TABLE session_cursor ADD COLUMN read_boot TEXT;      -- the boot it ran in
ALTER TABLE session_cursor ADD COLUMN read_clock INTEGER;  -- when it began, on that boot's clock
ALTER TABLE session_cursor ADD COLUMN read_seen TEXT;      -- [[kind, id, time_updated], ...]
