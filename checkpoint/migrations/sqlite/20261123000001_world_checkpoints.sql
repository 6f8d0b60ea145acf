-- The newest checkpoint of each world; see gaia-checkpoint's format module for `data`.
CREATE TABLE IF NOT EXISTS world_checkpoints (
    world_id    TEXT PRIMARY KEY,
    epoch       INTEGER NOT NULL,
    tick        INTEGER NOT NULL,
    data        BLOB NOT NULL,
    saved_at_ms INTEGER NOT NULL
);
