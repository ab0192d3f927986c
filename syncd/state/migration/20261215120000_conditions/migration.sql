-- What is wrong beyond one session (the receiver refusing the key, the opencode database
-- unreadable, deletions held back) and what happened to all of them (the database replaced),
-- as the daemon last saw it, for `syncd status`.
CREATE TABLE condition (
  name TEXT PRIMARY KEY,
  message TEXT NOT NULL,
  problem INTEGER NOT NULL,          -- 1: unhealthy while it lasts; 0: a notice
  time_created INTEGER NOT NULL
);

-- Sessions that vanished from opencode together with most others (a database replaced or
-- recreated): their remote copies are not deleted until `syncd deletions confirm` (or kept,
-- and the sessions forgotten, by `syncd deletions discard`).
CREATE TABLE held_deletion (
  session_id TEXT PRIMARY KEY,
  confirmed INTEGER NOT NULL DEFAULT 0,
  time_created INTEGER NOT NULL
);
