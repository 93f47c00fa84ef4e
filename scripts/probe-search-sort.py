"""Probe: does sorting a `$text` search by `_id` instead of `seq` make nx-27017 stop early?

Written down in docs/performance-history.md (2026-12-01 evening). Run from the project root:

    .work/venv/bin/nx-27017 --db memory --host 127.0.0.1 -p 27150 &
    .work/venv/bin/python scripts/probe-search-sort.py 300000

It loads N messages (60% in 50 rooms, 40% direct; "coffee" in 15%, "common3" in 3%, one
"topicK" of 2,001 each) once, then prints the median of 5 runs of each query, limit 20.
"""
import random, time, sys
from bson import ObjectId
from pymongo import MongoClient
c = MongoClient("mongodb://127.0.0.1:27150/?directConnection=true")
db = c.probe
m = db.messages
N = int(sys.argv[1])
if m.estimated_document_count() == 0:
    m.create_index([("body", "text")], name="body_text")
    m.create_index([("conversation", 1), ("seq", -1)])
    m.create_index([("seq", -1)])
    random.seed(1)
    t0 = int(time.time()) - 90*86400
    docs = []
    for i in range(N):
        ts = t0 + i * (90*86400) // N
        oid = ObjectId.from_datetime(__import__('datetime').datetime.utcfromtimestamp(ts))
        oid = ObjectId(oid.binary[:4] + i.to_bytes(8, 'big'))
        words = ["hello", "topic%d" % random.randint(0, 2000)]
        if random.random() < 0.15: words.append("coffee")
        if random.random() < 0.03: words.append("common3")
        r = random.random()
        if r < 0.6:
            room = "room%d" % random.randint(0, 49); conv = "r:" + room; doc = {"room_id": room}
        else:
            a, b = random.randint(0, 1999), random.randint(0, 1999)
            doc = {"sender_id": "u%d" % a, "recipient_id": "u%d" % b}; conv = "d:u%d:u%d" % (a, b)
        doc.update({"_id": oid, "seq": str(oid), "conversation": conv, "body": " ".join(words)})
        docs.append(doc)
        if len(docs) == 10000:
            m.insert_many(docs); docs = []
    if docs: m.insert_many(docs)
    print("loaded", m.estimated_document_count(), flush=True)
rooms = ["room%d" % i for i in range(50)]
def t(label, f, n=5):
    xs = []
    for _ in range(n):
        s = time.perf_counter(); r = f(); xs.append((time.perf_counter() - s) * 1000)
    print(f"{label}: {sorted(xs)[n//2]:.1f} ms (min {min(xs):.1f}) hits {len(r)}", flush=True)
for w in ["topic1000", "common3", "coffee"]:
    q = {"$text": {"$search": '"%s"' % w}, "room_id": {"$in": rooms}}
    t(f"{w} rooms sort seq", lambda: list(m.find(q).sort("seq", -1).limit(20)))
    t(f"{w} rooms sort _id", lambda: list(m.find(q).sort("_id", -1).limit(20)))
    q2 = {"$text": {"$search": '"%s"' % w}, "recipient_id": {"$eq": "u5"}}
    t(f"{w} dm sort seq", lambda: list(m.find(q2).sort("seq", -1).limit(20)))
    t(f"{w} dm sort _id", lambda: list(m.find(q2).sort("_id", -1).limit(20)))
