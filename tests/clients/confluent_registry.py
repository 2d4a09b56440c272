"""Drives keel's registry with Confluent's own Python client and Avro serdes.

Usage: python3 confluent_registry.py http://127.0.0.1:PORT/registry KEY_ID:SECRET
The credential is an API key's two halves, sent as HTTP Basic (`basic.auth.user.info`).
Exits non-zero (with the assertion) if keel answers anything a Confluent client does not accept.
"""
import json
import sys

from confluent_kafka.schema_registry import (
    Schema,
    SchemaRegistryClient,
    record_subject_name_strategy,
)
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

url, user_info = sys.argv[1], sys.argv[2]

# Without the credential, keel refuses with Confluent's 401 error code.
try:
    SchemaRegistryClient({"url": url}).get_subjects()
    raise AssertionError("keel answered a registry request without a credential")
except SchemaRegistryError as e:
    assert e.http_status_code == 401 and e.error_code == 40101, (e.http_status_code, e.error_code)

client = SchemaRegistryClient({"url": url, "basic.auth.user.info": user_info})

order = json.dumps({
    "type": "record", "namespace": "shop", "name": "order",
    "fields": [{"name": "id", "type": "string"}, {"name": "total", "type": "long"}],
})

# Register, look up, fetch by id.
schema_id = client.register_schema("shop.order", Schema(order, "AVRO"))
assert isinstance(schema_id, int), schema_id
assert client.register_schema("shop.order", Schema(order, "AVRO")) == schema_id
found = client.lookup_schema("shop.order", Schema(order, "AVRO"))
assert found.schema_id == schema_id and found.version == 1, found
fetched = client.get_schema(schema_id)
assert json.loads(fetched.schema_str) == json.loads(order), fetched.schema_str
assert client.get_subjects().count("shop.order") == 1
latest = client.get_latest_version("shop.order")
assert latest.version == 1 and latest.schema_id == schema_id, latest
assert client.get_versions("shop.order") == [1]
assert client.test_compatibility("shop.order", Schema(order, "AVRO")) is True

# The serdes, with subjects named by record (RecordNameStrategy), as keel names them.
conf = {"auto.register.schemas": False, "subject.name.strategy": record_subject_name_strategy}
ctx = SerializationContext("shop-orders", MessageField.VALUE)
serialize = AvroSerializer(client, order, conf=conf)
wire = serialize({"id": "o-1", "total": 42}, ctx)
assert wire[0] == 0 and int.from_bytes(wire[1:5], "big") == schema_id, wire[:5]
assert AvroDeserializer(client)(wire, ctx) == {"id": "o-1", "total": 42}

# keel's own event types: the catalog is registered under the event type names.
invoked = client.get_latest_version("l12.service_invoked")
serialize = AvroSerializer(client, invoked.schema.schema_str, conf=conf)
event = {"service_name": "planner", "method": "plan", "execution_time": 12.5,
         "status": "OK", "caller": None, "attempt": 1}
wire = serialize(event, SerializationContext("keel.service", MessageField.VALUE))
assert int.from_bytes(wire[1:5], "big") == invoked.schema_id
assert AvroDeserializer(client)(wire, ctx) == event

print("confluent client: ok")
