"""The reference the function bench measures against: a Python Lambda function doing the stream
function's everyday job the way Python handlers usually do it (boto3's TypeDeserializer,
json.dumps, opensearch-py's bulk), under the same Runtime API emulator and server.

Per invocation: each record's NewImage becomes a document and a REMOVE a delete, the last
change per key wins within the batch, one `_bulk` request carries them, and each item's outcome
is mapped back to its record for `batchItemFailures`; one summary log line. It does less than
the stream function (no external versions, no retries inside the invocation, no quarantine, no
metrics), so its cost is a lower bound for a Python function doing the whole job. It also keeps
the usual Python shortcut of numbers through floats, which the stream function exists to avoid.

Run by the bench as `python -m awslambdaric function.handler` with this directory as the
working directory; needs OPENSEARCH_URL and OPENSEARCH_INDEX.
"""

import json
import os
from decimal import Decimal

from boto3.dynamodb.types import TypeDeserializer
from opensearchpy import OpenSearch

INDEX = os.environ["OPENSEARCH_INDEX"]
CLIENT = OpenSearch(hosts=[os.environ["OPENSEARCH_URL"]], timeout=30)


class StreamDeserializer(TypeDeserializer):
    """A stream record's binaries are base64 text already (TypeDeserializer wants bytes, as
    boto3's own responses give them): they are kept as that text."""

    def _deserialize_b(self, value):
        return value

    def _deserialize_bs(self, value):
        return list(value)


DESERIALIZER = StreamDeserializer()


def plain(value):
    """What json.dumps cannot write itself: numbers and sets."""
    if isinstance(value, Decimal):
        # A number's text is gone; OpenSearch then maps every number field as float (`5E+2`
        # written as 500 would make a long field of a float one).
        return float(value)
    if isinstance(value, (set, frozenset)):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__}")


def item(image):
    return {name: DESERIALIZER.deserialize(value) for name, value in image.items()}


def handler(event, context):
    last = {}  # document id -> (sequence number, action lines); the last change wins
    superseded = []
    for record in event["Records"]:
        data = record["dynamodb"]
        keys = item(data["Keys"])
        doc_id = "|".join(str(keys[name]) for name in sorted(keys))
        if record["eventName"] == "REMOVE":
            lines = [json.dumps({"delete": {"_index": INDEX, "_id": doc_id}})]
        else:
            lines = [
                json.dumps({"index": {"_index": INDEX, "_id": doc_id}}),
                json.dumps(item(data["NewImage"]), default=plain),
            ]
        if doc_id in last:
            superseded.append(last[doc_id][0])
        last[doc_id] = (data["SequenceNumber"], lines)
    failures = []
    if last:
        body = "\n".join(line for _, lines in last.values() for line in lines) + "\n"
        response = CLIENT.bulk(body=body)
        for (sequence, lines), outcome in zip(last.values(), response["items"]):
            (action, result), = outcome.items()
            status = result.get("status", 500)
            if status >= 300 and not (action == "delete" and status == 404):
                failures.append({"itemIdentifier": sequence})
    print(json.dumps({
        "level": "INFO",
        "requestId": context.aws_request_id,
        "message": "batch done",
        "records": len(event["Records"]),
        "written": len(last),
        "superseded": len(superseded),
        "failed": len(failures),
    }))
    return {"batchItemFailures": failures}
