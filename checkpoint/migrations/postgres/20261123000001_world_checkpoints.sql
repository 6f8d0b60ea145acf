-- The newest checkpoint of each world; see gaia-checkpoint's format module for `data`.
CREATE TABLE IF NOT EXISTS world_checkpoints (
    world_id    TEXT PRIMARY KEY,
    epoch       BIGINT NOT NULL,
    tick        BIGINT NOT NULL,
    data        BYTEA NOT NULL,
    saved_at_ms BIGINT NOT NULL
);
