-- Consumers follow the log for one event type (`GET /v1/events?event_type=...&after=...`); without
-- this index every such poll walks the whole log from the cursor.
CREATE INDEX events_type_log_order ON events (event_type, tx_id, position);
