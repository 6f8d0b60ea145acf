-- The activity log: what was said in each world; the primary key orders a world's messages.
CREATE TABLE IF NOT EXISTS world_messages (
    world_id  TEXT NOT NULL,
    epoch     BIGINT NOT NULL,
    tick      BIGINT NOT NULL,
    seq       INTEGER NOT NULL,
    at_ms     BIGINT NOT NULL,
    author_id BIGINT NOT NULL,
    author    TEXT NOT NULL,
    text      TEXT NOT NULL,
    PRIMARY KEY (world_id, epoch, tick, seq)
) WITHOUT ROWID;
