-- Agents' memories. Hash-partitioned by world (16 ways), as world_messages is: a search
-- reads one agent's newest rows by the primary key's prefix, in one partition.
-- `embedding` is the vector's f32s, little-endian (pgvector's `vector` is the next step
-- where it can be installed).
CREATE TABLE IF NOT EXISTS agent_memories (
    world_id   TEXT NOT NULL,
    agent      BIGINT NOT NULL,
    id         BIGINT NOT NULL,
    at_ms      BIGINT NOT NULL,
    text       TEXT NOT NULL,
    importance DOUBLE PRECISION NOT NULL,
    embedding  BYTEA NOT NULL,
    PRIMARY KEY (world_id, agent, id)
) PARTITION BY HASH (world_id);
CREATE TABLE IF NOT EXISTS agent_memories_p0 PARTITION OF agent_memories FOR VALUES WITH (MODULUS 16, REMAINDER 0);
CREATE TABLE IF NOT EXISTS agent_memories_p1 PARTITION OF agent_memories FOR VALUES WITH (MODULUS 16, REMAINDER 1);
CREATE TABLE IF NOT EXISTS agent_memories_p2 PARTITION OF agent_memories FOR VALUES WITH (MODULUS 16, REMAINDER 2);
CREATE TABLE IF NOT EXISTS agent_memories_p3 PARTITION OF agent_memories FOR VALUES WITH (MODULUS 16, REMAINDER 3);
CREATE TABLE IF NOT EXISTS agent_memories_p4 PARTITION OF agent_memories FOR VALUES WITH (MODULUS 16, REMAINDER 4);
CREATE TABLE IF NOT EXISTS agent_memories_p5 PARTITION OF agent_memories FOR VALUES WITH (MODULUS 16, REMAINDER 5);
CREATE TABLE IF NOT EXISTS agent_memories_p6 PARTITION OF agent_memories FOR VALUES WITH (MODULUS 16, REMAINDER 6);
CREATE TABLE IF NOT EXISTS agent_memories_p7 PARTITION OF agent_memories FOR VALUES WITH (MODULUS 16, REMAINDER 7);
CREATE TABLE IF NOT EXISTS agent_memories_p8 PARTITION OF agent_memories FOR VALUES WITH (MODULUS 16, REMAINDER 8);
CREATE TABLE IF NOT EXISTS agent_memories_p9 PARTITION OF agent_memories FOR VALUES WITH (MODULUS 16, REMAINDER 9);
CREATE TABLE IF NOT EXISTS agent_memories_p10 PARTITION OF agent_memories FOR VALUES WITH (MODULUS 16, REMAINDER 10);
CREATE TABLE IF NOT EXISTS agent_memories_p11 PARTITION OF agent_memories FOR VALUES WITH (MODULUS 16, REMAINDER 11);
CREATE TABLE IF NOT EXISTS agent_memories_p12 PARTITION OF agent_memories FOR VALUES WITH (MODULUS 16, REMAINDER 12);
CREATE TABLE IF NOT EXISTS agent_memories_p13 PARTITION OF agent_memories FOR VALUES WITH (MODULUS 16, REMAINDER 13);
CREATE TABLE IF NOT EXISTS agent_memories_p14 PARTITION OF agent_memories FOR VALUES WITH (MODULUS 16, REMAINDER 14);
CREATE TABLE IF NOT EXISTS agent_memories_p15 PARTITION OF agent_memories FOR VALUES WITH (MODULUS 16, REMAINDER 15);
