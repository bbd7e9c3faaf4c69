"""
What taking row locks in one order costs (tests/test_lock_order.py says why):
each bare multi-row statement the lock-order work replaced, against its
ordered form, on N rows (default 10,000) of a throwaway PostgreSQL, best of
7 runs each, alternated, every run rolled back.

    PYTHONPATH=$PWD python bench/lock_order.py [rows]
"""
import os, sys, time
sys.path.insert(0, os.getcwd())
import psycopg2
from tests import pg

N = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
REPS = 7
pg.admin("CREATE DATABASE lockbench TEMPLATE powerctl_template")
conn = psycopg2.connect(pg.cluster().dsn("lockbench"))
cur = conn.cursor()
cur.execute("INSERT INTO clusters (name) VALUES ('c1')")
cur.execute("INSERT INTO leases (epoch, pserv, cluster, instance, expires_at)"
            " VALUES (7, 'p1', 'c1', 'i', now() + interval '1 hour')")
cur.execute("INSERT INTO nodes (name, cluster, power, owner_epoch)"
            " SELECT 'node-' || i, 'c1', '{}'::jsonb, 7 FROM generate_series(1, %s) i", (N,))
# rows rewritten in random order, as polls leave them
cur.execute("UPDATE nodes SET failed_polls = 0")
cur.execute("INSERT INTO power_ops (node, action, requester)"
            " SELECT name, 'on', 'bench' FROM nodes ORDER BY random()")
conn.commit()
cur.execute("ANALYZE")
conn.commit()
cur.execute("SELECT array_agg(id) FROM power_ops")
ids = cur.fetchone()[0]
conn.commit()

OPEN = "('pending', 'running')"
cases = {
    "leases.release": (
        [("UPDATE nodes SET owner_epoch = NULL WHERE owner_epoch = %s RETURNING cluster", (7,))],
        [("WITH locked AS MATERIALIZED (SELECT name FROM nodes WHERE owner_epoch = %s"
          " ORDER BY name FOR UPDATE) UPDATE nodes SET owner_epoch = NULL FROM locked"
          " WHERE nodes.name = locked.name RETURNING nodes.cluster", (7,))]),
    "assign, no live lease": (
        [("UPDATE nodes SET owner_epoch = NULL, handoff_epoch = NULL WHERE cluster = %s"
          " AND (owner_epoch IS NOT NULL OR handoff_epoch IS NOT NULL)", ("c1",))],
        [("WITH locked AS MATERIALIZED (SELECT name FROM nodes WHERE cluster = %s"
          " AND (owner_epoch IS NOT NULL OR handoff_epoch IS NOT NULL) ORDER BY name FOR UPDATE)"
          " UPDATE nodes SET owner_epoch = NULL, handoff_epoch = NULL FROM locked"
          " WHERE nodes.name = locked.name", ("c1",))]),
    "mark_running_many": (
        [(f"UPDATE power_ops SET state = 'running', pserv = %s, epoch = %s,"
          " started_at = COALESCE(started_at, now())"
          f" WHERE id = ANY(%s) AND state IN {OPEN}"
          " AND (pserv IS DISTINCT FROM %s OR epoch IS DISTINCT FROM %s)",
          ("p1", 7, ids, "p1", 7))],
        [(f"WITH locked AS MATERIALIZED (SELECT id FROM power_ops WHERE id = ANY(%s::bigint[])"
          f" AND state IN {OPEN} AND (pserv IS DISTINCT FROM %s OR epoch IS DISTINCT FROM %s)"
          " ORDER BY id FOR UPDATE) UPDATE power_ops o SET state = 'running', pserv = %s,"
          " epoch = %s, started_at = COALESCE(o.started_at, now())"
          f" FROM locked WHERE o.id = locked.id AND o.state IN {OPEN}",
          (sorted(ids), "p1", 7, "p1", 7))]),
}


def run(steps):
    start = time.perf_counter()
    for sql, args in steps:
        cur.execute(sql, args)
    took = time.perf_counter() - start
    conn.rollback()
    return took


try:
    print(f"rows: {N}, load average: {os.getloadavg()}")
    for what, (old, new) in cases.items():
        olds, news = [], []
        for _ in range(REPS):
            olds.append(run(old))
            news.append(run(new))
        o, n = min(olds), min(news)
        print(f"{what:24s} old {o * 1000:7.1f} ms  new {n * 1000:7.1f} ms  ratio {n / o:.2f}")
finally:
    conn.close()
    pg.admin("DROP DATABASE lockbench WITH (FORCE)")
