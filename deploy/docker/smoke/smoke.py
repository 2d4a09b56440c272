"""The compose stack's smoke test, as a downstream service sees keel.

Appends one agent.state.changed event over HTTP (keel:8080, with the admin key the stack was
started with), then finds that event on the broker's topic (its key, keel's headers, the
Confluent-framed Avro value decoded through keel's registry) and in the Redis stream. Exits 0
with one line per hop, or non-zero saying which hop failed.

Environment: KEEL_URL (http://keel:8080), KEEL_API_KEY, KAFKA_BOOTSTRAP (broker:9092),
REDIS_URL (redis://redis:6379).
"""
import json
import os
import sys
import time
import urllib.request
import uuid

import redis
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

URL = os.environ.get("KEEL_URL", "http://keel:8080")
KEY = os.environ["KEEL_API_KEY"].strip()
BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP", "broker:9092")
REDIS = os.environ.get("REDIS_URL", "redis://redis:6379")
TOPIC, STREAM = "keel.agent", "keel.stream.agent"
DEADLINE = time.monotonic() + float(os.environ.get("SMOKE_TIMEOUT_S", "90"))


def fail(hop, why):
    print(f"smoke: FAILED at {hop}: {why}", file=sys.stderr)
    sys.exit(1)


agent, event_id = str(uuid.uuid4()), str(uuid.uuid4())
body = json.dumps({"events": [{"id": event_id, "type": "agent.state.changed",
                               "payload": {"agent_id": agent, "to_state": "running"}}]})
request = urllib.request.Request(
    f"{URL}/v1/aggregates/agent/{agent}/events", data=body.encode(), method="POST",
    headers={"content-type": "application/json", "authorization": f"Bearer {KEY}"})
try:
    with urllib.request.urlopen(request, timeout=30) as answer:
        appended = json.load(answer)
except Exception as e:  # noqa: BLE001 - any failure here is the hop's failure
    fail("append", e)
print(f"smoke: appended agent {agent}: {json.dumps(appended)[:200]}")

# Kafka: every partition of the topic from the beginning, until the event's key shows up.
consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"smoke-{agent}",
                     "auto.offset.reset": "earliest", "enable.auto.commit": False})
registry = SchemaRegistryClient({"url": f"{URL}/registry",
                                 "basic.auth.user.info": KEY[len("keel_"):].replace("_", ":", 1)})
decode = AvroDeserializer(registry)
found = None
while found is None and time.monotonic() < DEADLINE:
    try:
        partitions = consumer.list_topics(TOPIC, timeout=5).topics[TOPIC].partitions
    except Exception:  # noqa: BLE001 - the topic appears once the relay has created it
        partitions = {}
    if not partitions:
        time.sleep(1)
        continue
    consumer.assign([TopicPartition(TOPIC, p, 0) for p in partitions])
    until = time.monotonic() + 10
    while found is None and time.monotonic() < min(until, DEADLINE):
        message = consumer.poll(1.0)
        if message is None or message.error():
            continue
        if message.key() == agent.encode():
            found = message
if found is None:
    fail("kafka", f"no record keyed {agent} on {TOPIC} from {BOOTSTRAP}")
headers = {k: v.decode() for k, v in (found.headers() or [])}
value = decode(found.value(), SerializationContext(TOPIC, MessageField.VALUE))
if str(value.get("agent_id")) != agent or value.get("to_state") != "running":
    fail("kafka", f"the record decodes to {value}")
if headers.get("keel-event-id") != event_id:
    fail("kafka", f"keel-event-id {headers.get('keel-event-id')} is not {event_id}")
print(f"smoke: kafka {TOPIC}[{found.partition()}]@{found.offset()} decoded {value}")
consumer.close()

# Redis: the durable stream holds the event.
client = redis.Redis.from_url(REDIS)
entry = None
while entry is None and time.monotonic() < DEADLINE:
    for entry_id, fields in client.xrange(STREAM, "-", "+"):
        if agent.encode() in b" ".join(fields.values()):
            entry = (entry_id, fields)
            break
    else:
        time.sleep(0.5)
if entry is None:
    fail("redis", f"no entry for agent {agent} in {STREAM}")
print(f"smoke: redis {STREAM} {entry[0].decode()}")
print("smoke: ok")
