"""Writes the fixtures in events/: Lambda DynamoDB Streams events in the shape AWS delivers
(`sam local generate-event dynamodb update` prints the same shape). Run: python3 events/generate.py"""
import base64, json, os

ARN = "arn:aws:dynamodb:eu-west-1:123456789012:table/items/stream/2026-11-01T00:00:00.000"
HERE = os.path.dirname(os.path.abspath(__file__))
seq = [100000000000000000000]


def record(name, keys, new=None, old=None, t=1763800000, ttl=False, view="NEW_AND_OLD_IMAGES"):
    seq[0] += 1
    ddb = {"ApproximateCreationDateTime": t, "Keys": keys, "SequenceNumber": str(seq[0]),
           "SizeBytes": 100, "StreamViewType": view}
    if new is not None:
        ddb["NewImage"] = new
    if old is not None:
        ddb["OldImage"] = old
    r = {"eventID": "e%d" % seq[0], "eventName": name, "eventVersion": "1.1", "eventSource": "aws:dynamodb",
         "awsRegion": "eu-west-1", "dynamodb": ddb, "eventSourceARN": ARN}
    if ttl:
        r["userIdentity"] = {"type": "Service", "principalId": "dynamodb.amazonaws.com"}
    return r


def item(pk, sk, **attrs):
    d = {"pk": {"S": pk}, "sk": {"N": str(sk)}}
    d.update(attrs)
    return d


def keys(pk, sk):
    return {"pk": {"S": pk}, "sk": {"N": str(sk)}}


def every_type(pk):
    return item(pk, 1,
        s={"S": "héllo \"wörld\" \\ / \n\t 😀 \u2028 日本語"},
        n_int={"N": "42"},
        n_big={"N": "12345678901234567890123456789012345678"},
        n_small={"N": "-0.00000000000000000000000000000000000012345678901234567890123456789012345678"},
        n_exp_hi={"N": "1E+125"},
        n_exp_lo={"N": "-1E-130"},
        n_exp={"N": "1E+30"},
        n_trailing={"N": "1.50"},
        b={"B": base64.b64encode(bytes(range(256))).decode()},
        t={"BOOL": True},
        f={"BOOL": False},
        z={"NULL": True},
        ss={"SS": ["a", "b", "ünïcode"]},
        ns={"NS": ["1", "2.5", "-3E+10", "99999999999999999999999999999999999999"]},
        bs={"BS": ["AA==", "AQI=", "/w=="]},
        l={"L": [{"S": "x"}, {"NULL": True}, {"L": [{"S": "nested"}]}]},
        l_num={"L": [{"N": "1"}, {"N": "0.000001"}, {"N": "-2E+20"}]},
        m={"M": {"inner": {"M": {"deep": {"N": "-0.5"}, "name": {"S": "d"}}}, "list": {"L": [{"M": {"k": {"S": "v"}}}]}}},
    )


def write(name, records):
    with open(os.path.join(HERE, name), "w") as f:
        json.dump({"Records": records}, f, indent=2, ensure_ascii=False)
        f.write("\n")


write("insert.json", [record("INSERT", keys("user#1", 1), item("user#1", 1, name={"S": "Ada"}, visits={"N": "1"}))])
write("modify.json", [record("MODIFY", keys("user#1", 1),
                             item("user#1", 1, name={"S": "Ada Lovelace"}, visits={"N": "2"}),
                             item("user#1", 1, name={"S": "Ada"}, visits={"N": "1"}), t=1763800060)])
write("remove.json", [record("REMOVE", keys("user#1", 1), old=item("user#1", 1, name={"S": "Ada Lovelace"}), t=1763800120)])
write("ttl-remove.json", [record("REMOVE", keys("session#9", 1), old=item("session#9", 1, expires={"N": "1763800000"}),
                                 t=1763800200, ttl=True)])
write("every-type.json", [record("INSERT", keys("types#1", 1), every_type("types#1"))])
big = "x" * (390 * 1024)
write("large-item.json", [record("INSERT", keys("large#1", 1), item("large#1", 1, blob={"S": big}, note={"S": "near 400 KB"}))])
seq[0] = 100000000000000000100
mixed = [
    record("INSERT", keys("order#1", 1), item("order#1", 1, total={"N": "19.99"}, status={"S": "new"})),
    record("INSERT", keys("order#2", 1), item("order#2", 1, total={"N": "5"}, status={"S": "new"})),
    record("MODIFY", keys("order#1", 1), item("order#1", 1, total={"N": "21.49"}, status={"S": "paid"}), t=1763800001),
    record("INSERT", keys("order#3", 2), item("order#3", 2, total={"N": "7.25"}, tags={"SS": ["gift"]})),
    record("REMOVE", keys("order#2", 1), old=item("order#2", 1, total={"N": "5"}), t=1763800002),
    record("INSERT", keys("order#4", 1), item("order#4", 1, total={"N": "1E+3"}, status={"S": "new"})),
    record("REMOVE", keys("order#5", 1), old=item("order#5", 1), t=1763800003, ttl=True),
    record("MODIFY", keys("order#1", 1), item("order#1", 1, total={"N": "21.49"}, status={"S": "shipped"}), t=1763800004),
]
write("mixed.json", mixed)

# Type drift, as schemaless tables have it: `price` a number, a string, a boolean and NULL in
# different items; `tags` lists mixing strings, numbers and booleans, a list of lists, a string
# set and a number set; `dims` a map whose inner attribute drifts too.
seq[0] = 100000000000000000200
drift = [
    record("INSERT", keys("drift#1", 1), item("drift#1", 1, price={"N": "3.5"}, tags={"L": [{"S": "red"}, {"N": "1"}, {"BOOL": True}]},
                                               dims={"M": {"size": {"N": "10"}}}, note={"S": "first pot of coffee"})),
    record("INSERT", keys("drift#2", 1), item("drift#2", 1, price={"S": "cheap"}, tags={"L": [{"N": "2.5"}, {"S": "blue"}]},
                                               dims={"M": {"size": {"S": "XL"}}}, note={"N": "7"})),
    record("INSERT", keys("drift#3", 1), item("drift#3", 1, price={"N": "12"}, tags={"L": [{"L": [{"S": "x"}, {"N": "3"}]}, {"BOOL": False}]},
                                               dims={"M": {"size": {"BOOL": True}}})),
    record("INSERT", keys("drift#4", 1), item("drift#4", 1, price={"BOOL": True}, tags={"SS": ["green", "red"]},
                                               note={"BOOL": False})),
    record("INSERT", keys("drift#5", 1), item("drift#5", 1, price={"NULL": True}, tags={"NS": ["4", "1E+125"]},
                                               note={"S": "coffee beans"})),
    record("INSERT", keys("drift#6", 1), item("drift#6", 1, price={"N": "-0.000000000000000000000000000000000000012345678901234567890123456789012345678"},
                                               tags={"BS": [base64.b64encode(b"\x00\x01").decode()]})),
    record("INSERT", keys("drift#7", 1), item("drift#7", 1, price={"N": "99"}, tags={"NS": ["5"]}, dims={"M": {"size": {"N": "2"}}})),
]
write("drift.json", drift)
