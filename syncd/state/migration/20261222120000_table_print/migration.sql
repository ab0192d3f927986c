-- With table mode's last read, what it knows of the rows it kept no stamp of (TablePrint): a
-- row rewritten with a stamp below the next read's floor changes it, and is found.
ALTER TABLE session_cursor ADD COLUMN read_print TEXT;  -- [below, session, rows, total]
