-- Dead letters by key sequence (src/consumer/dlq/sequence.rs, src/relay/admin/sequence.rs):
-- the operator's view groups parked rows by the key they hold up, and bulk retries and skips
-- walk those sequences in key order, a chunk per transaction.
--
--   * A sequence is one key's open rows: a consumer group's (record key, topic, partition) in
--     consumer_dlq, a sink's (aggregate id, aggregate type) in relay_parked. Its head is its
--     oldest open row.
--   * Both indexes lead with the key, so the walk skips from one sequence to the next with one
--     index probe each (never reading the rows held behind a head), a `key` filter seeks straight
--     to its sequences, and a head and its held count are read from the same index.
--   * consumer_dlq_open_age: the cross-group overview (each group's open depth and oldest row).

CREATE INDEX consumer_dlq_open_key ON consumer_dlq (group_id, record_key, topic, partition, kafka_offset)
    WHERE state IN ('parked', 'held', 'retry');

CREATE INDEX consumer_dlq_open_age ON consumer_dlq (group_id, created_at)
    WHERE state IN ('parked', 'held', 'retry');

CREATE INDEX relay_parked_key ON relay_parked (sink, aggregate_id, aggregate_type, position);
