-- The activity log: what was said in each world. Hash-partitioned by world (16 ways), so
-- one world's page reads one partition and the table grows by partitions; the primary key
-- orders a world's messages (a restored world starts a new epoch, so lines said after its
-- last checkpoint are kept, not overwritten).
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
) PARTITION BY HASH (world_id);
CREATE TABLE IF NOT EXISTS world_messages_p0 PARTITION OF world_messages FOR VALUES WITH (MODULUS 16, REMAINDER 0);
CREATE TABLE IF NOT EXISTS world_messages_p1 PARTITION OF world_messages FOR VALUES WITH (MODULUS 16, REMAINDER 1);
CREATE TABLE IF NOT EXISTS world_messages_p2 PARTITION OF world_messages FOR VALUES WITH (MODULUS 16, REMAINDER 2);
CREATE TABLE IF NOT EXISTS world_messages_p3 PARTITION OF world_messages FOR VALUES WITH (MODULUS 16, REMAINDER 3);
CREATE TABLE IF NOT EXISTS world_messages_p4 PARTITION OF world_messages FOR VALUES WITH (MODULUS 16, REMAINDER 4);
CREATE TABLE IF NOT EXISTS world_messages_p5 PARTITION OF world_messages FOR VALUES WITH (MODULUS 16, REMAINDER 5);
CREATE TABLE IF NOT EXISTS world_messages_p6 PARTITION OF world_messages FOR VALUES WITH (MODULUS 16, REMAINDER 6);
CREATE TABLE IF NOT EXISTS world_messages_p7 PARTITION OF world_messages FOR VALUES WITH (MODULUS 16, REMAINDER 7);
CREATE TABLE IF NOT EXISTS world_messages_p8 PARTITION OF world_messages FOR VALUES WITH (MODULUS 16, REMAINDER 8);
CREATE TABLE IF NOT EXISTS world_messages_p9 PARTITION OF world_messages FOR VALUES WITH (MODULUS 16, REMAINDER 9);
CREATE TABLE IF NOT EXISTS world_messages_p10 PARTITION OF world_messages FOR VALUES WITH (MODULUS 16, REMAINDER 10);
CREATE TABLE IF NOT EXISTS world_messages_p11 PARTITION OF world_messages FOR VALUES WITH (MODULUS 16, REMAINDER 11);
CREATE TABLE IF NOT EXISTS world_messages_p12 PARTITION OF world_messages FOR VALUES WITH (MODULUS 16, REMAINDER 12);
CREATE TABLE IF NOT EXISTS world_messages_p13 PARTITION OF world_messages FOR VALUES WITH (MODULUS 16, REMAINDER 13);
CREATE TABLE IF NOT EXISTS world_messages_p14 PARTITION OF world_messages FOR VALUES WITH (MODULUS 16, REMAINDER 14);
CREATE TABLE IF NOT EXISTS world_messages_p15 PARTITION OF world_messages FOR VALUES WITH (MODULUS 16, REMAINDER 15);
