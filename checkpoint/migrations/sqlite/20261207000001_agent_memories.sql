-- Agents' memories; the primary key finds an agent's, newest (largest id) last.
-- `embedding` is the vector's f32s, little-endian.
CREATE TABLE IF NOT EXISTS agent_memories (
    world_id   TEXT NOT NULL,
    agent      BIGINT NOT NULL,
    id         BIGINT NOT NULL,
    at_ms      BIGINT NOT NULL,
    text       TEXT NOT NULL,
    importance DOUBLE PRECISION NOT NULL,
    embedding  BLOB NOT NULL,
    PRIMARY KEY (world_id, agent, id)
) WITHOUT ROWID;
