#!/usr/bin/env python3
"""A discrete-event model of hand-over at COMMIT and group execution under contention.

It models protocol 1.1's two mechanisms on txbench's `transfer`, to choose their parameters
before building them (key_queues.py, beside it, models protocol 1.0 only).

Each of C clients runs transfers back to back: two distinct keys out of H (both of them when
H = 2), the two UPDATEs in random order (from, to), as txbench's `transfer` does. Two layers
of locks are modelled:

- the broker's keys (every variant but `early`): granted in one of two orders (--grant):
  `ascending` (today: one key at a time in ascending order, a FIFO queue per key, a request
  keeps the lower keys while it waits) or `all-at-once` (a request waits holding nothing and
  is granted all its keys together; rule below);
- InnoDB's row locks, one per key: a statement that finds its row locked by another database
  transaction waits in a FIFO queue there, and when granted answers WAKE ms later (InnoDB's
  wake-up of the waiting thread, which is slow under load; calibrated, see README.md).

Durations (ms; defaults calibrated in README.md from the 2026-12-01 measurements):
  STMT      one UPDATE round trip from the broker's session (or a plain client)
  MEMBER    one group member sent as one multi-statement `SAVEPOINT; UPDATE; UPDATE`
            (--member-rts 1); with --member-rts 3 the member is three round trips and costs
            MEMBER + 2 RT
  APPLY     from COMMIT sent to the commit applied in memory (InnoDB releases row locks
            then when the binary log is off) and queued for the redo-log flush
  REPLY     from the last sync of a commit to its answer at the session (waking the
            committing thread, the reply); COMMIT's round trip is APPLY + syncs + REPLY
  FSYNC     one redo-log flush; commits that arrive while one runs wait for the next, which
            takes all of them (group commit)
  BINLOG    with --binlog (log_bin, sync_binlog = 1): a second, binary-log sync after the redo
            flush (prepare); InnoDB then releases row locks only after it (without --binlog,
            when the commit is applied, before the flush). The two logs sync on one device,
            one sync at a time (--one-disk), and a binary-log sync takes at most
            --binlog-batch commits (calibrated: 1)
  HANDOFF   from a key's release to the next holder's first statement (coordinator, wake-up),
            paid by a request that had to wait for a key
  CLIENT    from an answer to the client's next request reaching the broker

Variants:
  broker          keys released when COMMIT has answered (protocol 1.0 step 5; today)
  early           no broker: plain clients with sorted UPDATEs on InnoDB's row locks
                  (`direct-sorted`); locks released when the commit is applied
  handover        keys pass to the next waiter when COMMIT is sent; its UPDATEs then queue
                  in InnoDB behind the previous holder's row locks
  group           keys released when COMMIT has answered; the holder (leader) runs queued
                  requests as members of its database transaction, one COMMIT for all
  handover+group  both

Group formation (group variants): when the leader's own statements (or the last member's) are
done and the group has fewer than --max-group requests, it takes the first waiting request R
that needs a key the leader holds and whose every key is held by the leader, or already
granted to R itself while it waits (ascending order), or free: no holder and nobody waiting
for it (`all-at-once`: not reserved, below). The leader never waits for a key; with --linger
it waits that long once for a member when none is eligible, else it commits at once.
--join front takes R only from the front of a key's queue; --join scan (default) looks
through the whole queue, each request overtaken at most max-group - 1 times per group.

`all-at-once` grant rule (starvation-free): waiting requests are kept in arrival order. After
every release and arrival the coordinator scans them in that order and grants a request all
its keys when none is held and none is reserved by an earlier waiter. A waiter whose key went
to a later request (granted, or taken into a group) has been overtaken; once overtaken
--bypass times it reserves its keys: no later request is granted any of them, or joins a
group with them, until it has them. So no waiter is overtaken much more than `bypass` times
(a few winners of one scan may pass it together), and the earliest reserving waiter gets its
keys as soon as their holders and the older waiters before it are done. Nobody holds a key while waiting, so no cycle of waits can form (bypass 0 is strict
FIFO over all keys). A holder's `lock` extension (interactive transactions, not modelled) must
go ahead of waiters, who hold nothing, or it could wait for a waiter that waits for it.

The two cores (--cores): the broker, MariaDB and the load generator share them. Every
operation costs CPU (CPU below: a client request, a database round trip, each further
statement of a multi-statement, a COMMIT); u is the share of the cores a run needs, and every
duration but the log syncs is stretched by s = 1 / (1 - u^2), the mean response time of a
two-server queue at utilization u. Since u depends on s (slower steps, fewer transactions),
simulate() finds the s that agrees with itself by bisection over short runs, then runs once
more at that s. --cores 0 turns this off (the lock chain alone).

Output: committed tx/s, commits per redo flush, mean group size (requests per database
transaction), p50 and p99 latency (from the request reaching the broker to its answer), the
share of the cores used, and the stretch.

Standard library only; deterministic for a given --seed.
"""
import argparse
import collections
import heapq
import random

VARIANTS = ("broker", "early", "handover", "group", "handover+group")

# Calibrated defaults (README.md, "Calibration"): binary log off, then on.
DEFAULTS = {
    False: dict(stmt_ms=0.029, member_ms=0.033, rt_ms=0.025, apply_ms=0.029, reply_ms=0.295,
                fsync_ms=0.112, binlog_ms=0.0, handoff_ms=0.01, wake_ms=0.21, client_ms=0.048),
    True: dict(stmt_ms=0.029, member_ms=0.044, rt_ms=0.025, apply_ms=0.029, reply_ms=0.295,
               fsync_ms=0.112, binlog_ms=0.25, handoff_ms=0.01, wake_ms=0.21, client_ms=0.048),
}

# CPU per operation, µs of the machine's cores together, and the cores (README.md): a client
# request to the broker and its answer (txbench and the broker); one database round trip
# (MariaDB and the driver); each further statement of a multi-statement; a statement's wait
# for an InnoDB row lock; a database COMMIT (MariaDB's commit work beyond a round trip).
# one_disk: the redo log and the binary log sync on one device, one sync at a time.
# binlog_batch: commits per binary-log sync at most (0: all waiting); 1 fits direct-sorted
# with the binary log on (README.md, "Calibration").
# cores = 0: no CPU model (no stretch).
CPU = dict(cpu_request_us=83.0, cpu_rt_us=44.0, cpu_statement_us=20.0, cpu_wait_us=0.0,
           cpu_commit_us=30.0, cores=2.0, one_disk=1.0, binlog_batch=1.0)
for _defaults in DEFAULTS.values():
    _defaults.update(CPU)

# Durations that stretch when the cores are busy: everything but the log syncs.
LOADED = ("stmt_ms", "member_ms", "rt_ms", "apply_ms", "reply_ms", "handoff_ms", "wake_ms",
          "client_ms")


class Request:
    __slots__ = ("id", "client", "keys", "rows", "arrival", "next", "waited", "overtaken")

    def __init__(self, request_id, client, keys, rows, arrival):
        self.id = request_id
        self.client = client
        self.keys = keys            # ascending
        self.rows = rows            # the order the statements touch them
        self.arrival = arrival
        self.next = 0               # ascending grant: index of the next key to acquire
        self.waited = False
        self.overtaken = 0


class Unit:
    """One database transaction: a lone request, or a group (leader first)."""
    __slots__ = ("id", "members", "keys", "rows", "lingered")

    def __init__(self, leader):
        self.id = leader.id
        self.members = [leader]
        self.keys = set(leader.keys)
        self.rows = set()
        self.lingered = False


class Stage:
    """One log sync with group commit: a batch is everything waiting when a sync starts (at
    most `limit` commits when limit > 0)."""
    __slots__ = ("duration", "limit", "waiting", "busy", "syncs")

    def __init__(self, duration, limit=0):
        self.duration = duration
        self.limit = limit
        self.waiting = []
        self.busy = False
        self.syncs = 0


class Model:
    def __init__(self, variant, clients, hot, params, binlog, grant="ascending", max_group=0,
                 member_rts=1, join="scan", linger_ms=0.0, bypass=4, seed=1):
        self.variant = variant
        self.uses_keys = variant != "early"
        self.handover = variant.startswith("handover")
        self.grouping = variant.endswith("group")
        self.clients = clients
        self.hot = hot
        self.p = params
        self.binlog = binlog
        self.grant = grant
        self.max_group = max_group if max_group > 0 else 1 << 30
        self.member_rts = member_rts
        self.join = join
        self.linger_ms = linger_ms
        self.bypass = bypass
        self.rng = random.Random(seed)
        self.now = 0.0
        self.events = []
        self.sequence = 0
        # broker keys
        self.holder = {}                                   # key -> request or unit id
        self.queue = {k: collections.deque() for k in range(hot)}   # ascending grant
        self.waiting = []                                  # all-at-once, arrival order
        self.requests = {}
        self.units = {}
        # InnoDB row locks
        self.row_holder = {}
        self.row_queue = {k: collections.deque() for k in range(hot)}
        self.redo = Stage(params["fsync_ms"])
        self.binlog_stage = Stage(params["binlog_ms"], int(params["binlog_batch"]))
        # figures
        self.measuring = False
        self.committed = 0
        self.latencies = []
        self.unit_commits = 0
        self.counted_requests = 0
        self.round_trips = 0
        self.broker_requests = 0
        self.innodb_waits = 0
        self.extra_statements = 0       # statements of a multi-statement after its first
        self.redo_syncs_at_start = 0

    # --- events ---------------------------------------------------------------------------
    def at(self, when, action, *args):
        self.sequence += 1
        heapq.heappush(self.events, (when, self.sequence, action, args))

    def run(self, warmup_ms, measure_ms):
        for client in range(self.clients):
            self.arrive(client)
        while self.events:
            when, _, action, args = heapq.heappop(self.events)
            if not self.measuring and when >= warmup_ms:
                self.measuring = True
                self.redo_syncs_at_start = self.redo.syncs
            if when > warmup_ms + measure_ms:
                break
            self.now = when
            action(*args)
        return self.figures(measure_ms)

    def figures(self, measure_ms):
        seconds = measure_ms / 1000
        lat = sorted(self.latencies)
        tx = self.committed / seconds
        syncs = self.redo.syncs - self.redo_syncs_at_start
        p = self.p
        cpu_us = (self.broker_requests * p["cpu_request_us"] + self.round_trips * p["cpu_rt_us"]
                  + self.extra_statements * p["cpu_statement_us"]
                  + self.innodb_waits * p["cpu_wait_us"] + self.unit_commits * p["cpu_commit_us"])
        cores = cpu_us / 1e6 / seconds
        return {
            "tx/s": tx,
            "commits/fsync": self.unit_commits / max(syncs, 1),
            "group": self.counted_requests / max(self.unit_commits, 1),
            "p50": lat[len(lat) // 2] if lat else 0.0,
            "p99": lat[int(len(lat) * 0.99)] if lat else 0.0,
            "cores": cores,
            "innodb waits/tx": self.innodb_waits / max(self.committed, 1),
        }

    # --- clients --------------------------------------------------------------------------
    def arrive(self, client):
        self.sequence += 1
        if self.hot == 2:
            keys = (0, 1)
        else:
            keys = tuple(sorted(self.rng.sample(range(self.hot), 2)))
        rows = keys if self.rng.random() < 0.5 else (keys[1], keys[0])
        request = Request(self.sequence, client, keys, rows, self.now)
        self.requests[request.id] = request
        if not self.uses_keys:
            self.start_plain(request)
        elif self.grant == "ascending":
            self.acquire_ascending(request)
        else:
            self.waiting.append(request)
            self.grant_all_at_once()

    def answer(self, unit):
        if self.uses_keys and not self.handover:
            self.release_keys(unit)
        if self.measuring:
            self.unit_commits += 1
            self.counted_requests += len(unit.members)
        for request in unit.members:
            del self.requests[request.id]
            if self.measuring:
                self.committed += 1
                self.latencies.append(self.now - request.arrival)
                if self.uses_keys:
                    self.broker_requests += 1
            self.at(self.now + self.p["client_ms"], self.arrive, request.client)
        del self.units[unit.id]

    # --- broker keys: ascending, hold-and-wait ---------------------------------------------
    def acquire_ascending(self, request):
        while request.next < len(request.keys):
            key = request.keys[request.next]
            if key not in self.holder and not self.queue[key]:
                self.holder[key] = request.id
                request.next += 1
            else:
                self.queue[key].append(request.id)
                request.waited = True
                return
        self.start_unit(request)

    # --- broker keys: all at once ------------------------------------------------------------
    def grant_all_at_once(self):
        blocked = set(self.holder)          # held, or reserved by an earlier waiter
        granted = []
        for request in self.waiting:
            if len(blocked) >= self.hot:
                break
            if blocked.isdisjoint(request.keys):
                granted.append(request)
                blocked.update(request.keys)
                for key in request.keys:
                    self.holder[key] = request.id
                continue
            request.waited = True
            if request.overtaken >= self.bypass:
                blocked.update(request.keys)
        if not granted:
            return
        for request in granted:
            self.waiting.remove(request)
        self.note_overtaking(granted)
        for request in granted:
            self.start_unit(request)

    def note_overtaking(self, winners):
        """Every waiter older than a winner and sharing a key with it has been overtaken."""
        for winner in winners:
            for older in self.waiting:
                if older.id >= winner.id:
                    break
                if not set(older.keys).isdisjoint(winner.keys):
                    older.overtaken += 1

    def release_keys(self, unit):
        keys = sorted(unit.keys)
        for key in keys:
            if self.holder.get(key) == unit.id:
                del self.holder[key]
        unit.keys = set()
        if self.grant == "ascending":
            for key in keys:
                if key not in self.holder and self.queue[key]:
                    request = self.requests[self.queue[key].popleft()]
                    self.holder[key] = request.id
                    request.next += 1
                    self.acquire_ascending(request)
        else:
            self.grant_all_at_once()

    # --- execution ----------------------------------------------------------------------------
    def start_unit(self, request):
        self.round_trips += self.measuring     # START TRANSACTION, sent while waiting
        unit = Unit(request)
        self.units[unit.id] = unit
        for key in request.keys:
            self.holder[key] = unit.id
        delay = self.p["handoff_ms"] if request.waited else 0.0
        self.at(self.now + delay, self.run_own_statements, unit)

    def run_own_statements(self, unit):
        rows = unit.members[0].rows
        if self.grouping and self.member_rts == 1:
            self.extra_statements += self.measuring
            self.statement(unit, rows, self.p["member_ms"], self.after_statements, unit)
        else:
            self.statement(unit, rows[:1], self.p["stmt_ms"], self.statement, unit, rows[1:],
                           self.p["stmt_ms"], self.after_statements, unit)

    def after_statements(self, unit):
        if self.grouping:
            self.extend_group(unit)
        else:
            self.commit(unit)

    def statement(self, unit, rows, cost, then, *args):
        """One round trip that locks `rows` in InnoDB, in order, then answers."""
        if self.measuring:
            self.round_trips += 1
        start = self.now
        waited_until = [None]

        def lock_from(index):
            while index < len(rows):
                row = rows[index]
                owner = self.row_holder.get(row)
                if owner is None or owner == unit.id:
                    self.row_holder[row] = unit.id
                    unit.rows.add(row)
                    index += 1
                    continue
                self.innodb_waits += self.measuring
                self.row_queue[row].append((unit, granted, index))
                return
            if waited_until[0] is None:
                done = start + cost
            else:
                done = max(start + cost, waited_until[0] + self.p["wake_ms"])
            self.at(done, then, *args)

        def granted(index):
            waited_until[0] = self.now
            lock_from(index + 1)

        lock_from(0)

    def release_rows(self, unit):
        for row in sorted(unit.rows):
            if self.row_queue[row]:
                waiter, granted, index = self.row_queue[row].popleft()
                self.row_holder[row] = waiter.id
                waiter.rows.add(row)
                granted(index)
            else:
                del self.row_holder[row]
        unit.rows = set()

    # --- groups --------------------------------------------------------------------------------
    def extend_group(self, unit):
        if len(unit.members) < self.max_group:
            member = self.find_member(unit)
            if member is not None:
                self.add_member(unit, member)
                cost = self.p["member_ms"]
                if self.member_rts == 1:
                    self.extra_statements += 2 * self.measuring
                    self.statement(unit, member.rows, cost, self.extend_group, unit)
                else:
                    # SAVEPOINT, then each UPDATE: the same work in three round trips,
                    # MEMBER + 2 RT in all
                    rt = self.p["rt_ms"]
                    update = (cost - rt) / 2 + rt
                    self.statement(unit, (), rt, self.statement, unit, member.rows[:1], update,
                                   self.statement, unit, member.rows[1:], update,
                                   self.extend_group, unit)
                return
            if self.linger_ms > 0 and not unit.lingered:
                unit.lingered = True
                self.at(self.now + self.linger_ms, self.extend_group, unit)
                return
        self.commit(unit)

    def find_member(self, unit):
        if self.grant == "ascending":
            for key in sorted(unit.keys):
                for position, request_id in enumerate(self.queue[key]):
                    request = self.requests[request_id]
                    if self.may_join_ascending(unit, request):
                        del self.queue[key][position]
                        return request
                    if self.join == "front":
                        break
            return None
        reserved = set()
        for request in self.waiting:
            if not unit.keys.isdisjoint(request.keys) and reserved.isdisjoint(request.keys) \
                    and all(self.holder.get(key, unit.id) == unit.id for key in request.keys):
                return request
            if request.overtaken >= self.bypass:
                reserved.update(request.keys)
        return None

    def may_join_ascending(self, unit, request):
        for key in request.keys:
            owner = self.holder.get(key)
            if owner == unit.id or owner == request.id:
                continue
            if owner is None and not self.queue[key]:
                continue
            return False
        return True

    def add_member(self, unit, request):
        for key in request.keys:
            self.holder[key] = unit.id
        unit.keys.update(request.keys)
        unit.members.append(request)
        if self.grant != "ascending":
            self.waiting.remove(request)
            self.note_overtaking([request])

    # --- commit ---------------------------------------------------------------------------------
    def commit(self, unit):
        if self.measuring:
            self.round_trips += 1
        if self.handover:
            self.release_keys(unit)
        self.at(self.now + self.p["apply_ms"], self.commit_applied, unit)

    def commit_applied(self, unit):
        if not self.binlog:
            self.release_rows(unit)     # InnoDB: in memory, before the flush
        self.enter(self.redo, unit)

    def enter(self, stage, unit):
        stage.waiting.append(unit)
        self.start_sync(stage)

    def start_sync(self, stage):
        if not stage.waiting or stage.busy:
            return
        if self.p["one_disk"] and (self.redo.busy or self.binlog_stage.busy):
            return      # one device: a sync waits for the other log's sync
        stage.busy = True
        stage.syncs += 1
        batch = stage.waiting[:stage.limit] if stage.limit > 0 else stage.waiting
        stage.waiting = stage.waiting[len(batch):]
        self.at(self.now + stage.duration, self.synced, stage, batch)

    def synced(self, stage, batch):
        stage.busy = False
        for unit in batch:
            if stage is self.redo and self.binlog:
                self.binlog_stage.waiting.append(unit)      # the whole batch, one sync
            else:
                if self.binlog:
                    self.release_rows(unit)     # commit_ordered, after the binlog sync
                self.at(self.now + self.p["reply_ms"], self.answer, unit)
        self.start_sync(self.binlog_stage)
        self.start_sync(self.redo)

    # --- plain clients (early) ----------------------------------------------------------------
    def start_plain(self, request):
        self.round_trips += self.measuring     # START TRANSACTION
        unit = Unit(request)
        self.units[unit.id] = unit
        low, high = request.keys
        # START TRANSACTION is in CLIENT; then the sorted UPDATEs, each a round trip
        self.statement(unit, (low,), self.p["stmt_ms"], self.statement, unit, (high,),
                       self.p["stmt_ms"], self.commit, unit)


def simulate(variant, clients, hot, binlog=False, params=None, seconds=2.0, warmup=0.3,
             **options):
    """Run one configuration; with cores > 0, first find the stretch of the CPU-bound
    durations that is consistent with the CPU the run needs (see `stretch_for`)."""
    base = dict(DEFAULTS[binlog])
    base.update(params or {})

    def run(stretch, measure_seconds):
        scaled = dict(base)
        for name in LOADED:
            scaled[name] *= stretch
        model = Model(variant, clients, hot, scaled, binlog, **options)
        return model.run(warmup * 1000, measure_seconds * 1000)

    stretch = 1.0
    if base["cores"] > 0:
        stretch = stretch_for(lambda s: run(s, min(seconds, 0.5))["cores"] / base["cores"])
    figures = run(stretch, seconds)
    figures["stretch"] = stretch
    figures["cpu"] = figures["cores"] / base["cores"] if base["cores"] else 0.0
    return figures


def stretch_for(utilization_at):
    """The stretch s of every CPU-bound duration at which s = 1 / (1 - u(s)^2), u being the
    share of the cores the run needs at that stretch (the mean response time of a two-server
    queue at utilization u, relative to an idle one). u falls as s grows (slower steps, fewer
    transactions), so bisection finds the one solution."""
    def excess(s):
        u = min(utilization_at(s), 0.99)
        return 1 / (1 - u * u) - s
    low, high = 1.0, 2.0
    if excess(low) <= 0:
        return low
    while excess(high) > 0:
        low, high = high, high * 2
    for _ in range(6):
        middle = (low * high) ** 0.5
        if excess(middle) > 0:
            low = middle
        else:
            high = middle
    return (low * high) ** 0.5


HEADER = (f"{'log':>3} {'H':>2} {'C':>3} {'variant':<15} {'grant':<11} {'max':>4} {'rts':>3} "
          f"{'tx/s':>7} {'c/fsync':>7} {'group':>5} {'p50':>6} {'p99':>6} {'cpu':>4} "
          f"{'stretch':>7}")


def line(binlog, hot, clients, variant, grant, max_group, member_rts, f):
    grouping = variant.endswith("group")
    return (f"{'on' if binlog else 'off':>3} {hot:>2} {clients:>3} {variant:<15} "
            f"{grant if variant != 'early' else '-':<11} "
            f"{(max_group or 'inf') if grouping else '-':>4} {member_rts if grouping else '-':>3} "
            f"{f['tx/s']:>7.0f} {f['commits/fsync']:>7.2f} {f['group']:>5.1f} {f['p50']:>6.1f} "
            f"{f['p99']:>6.1f} {f['cpu']:>4.0%} {f['stretch']:>7.2f}")


# Measured on this machine (bench/README.md, /work/shared notes): direct-sorted and broker
# tx/s for transfer, 2026-12-01; the H=10 C=128 pair is from 2026-11-30 (second session).
MEASURED = {
    (10, 32, False): {"broker": 3512, "direct-sorted": 6250},
    (10, 32, True): {"broker": 2330, "direct-sorted": 2693},
    (2, 32, False): {"broker": 1912, "direct-sorted": 3585},
    (2, 32, True): {"broker": 1300, "direct-sorted": 1569},
    (10, 128, False): {"broker": 3809, "direct-sorted": 6070},
}


def calibrate(seconds, seed):
    """Model against the measured figures it was calibrated on."""
    print("| log | H | C | target | measured tx/s | model tx/s | error | model p99 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for (hot, clients, binlog), figures in MEASURED.items():
        for target, measured in figures.items():
            variant = "broker" if target == "broker" else "early"
            f = simulate(variant, clients, hot, binlog, seconds=seconds, seed=seed)
            print(f"| {'on' if binlog else 'off'} | {hot} | {clients} | {target} | {measured} "
                  f"| {f['tx/s']:.0f} | {f['tx/s'] / measured - 1:+.0%} | {f['p99']:.1f} |",
                  flush=True)
    print()
    print("One connection, groups of G members on the same two rows (member + commit / G):")
    for binlog, measured in ((False, (2021, 6957, 17517, 23743)), (True, (1362, 4387, 10572, 18857))):
        p = DEFAULTS[binlog]
        commit = p["apply_ms"] + p["fsync_ms"] + p["binlog_ms"] + p["reply_ms"]
        model = [1000 / (p["member_ms"] + commit / g) for g in (1, 4, 16, 64)]
        print(f"  binlog {'on ' if binlog else 'off'}: model " +
              " / ".join(f"{m:.0f}" for m in model) + "  measured " +
              " / ".join(str(m) for m in measured))


def sweep_rows():
    rows = [("broker", "ascending", 0, 1, {}), ("handover", "ascending", 0, 1, {})]
    for variant in ("group", "handover+group"):
        for member_rts in (1, 3):
            for max_group in (4, 8, 16, 32, 0):
                rows.append((variant, "ascending", max_group, member_rts, {}))
    rows.append(("broker", "all-at-once", 0, 1, {}))
    rows.append(("handover", "all-at-once", 0, 1, {}))
    for max_group in (8, 16, 0):
        rows.append(("handover+group", "all-at-once", max_group, 1, {}))
    return rows


def sweep(settings, seconds, seed, rows=None):
    """The table of README.md: every setting, every variant, in markdown."""
    for hot, clients, binlog in settings:
        early = simulate("early", clients, hot, binlog, seconds=seconds, seed=seed)
        measured = MEASURED.get((hot, clients, binlog), {}).get("direct-sorted")
        print(f"\n**H={hot}, C={clients}, binary log {'on' if binlog else 'off'}** "
              f"(model `early` = direct-sorted: {early['tx/s']:.0f} tx/s, p99 {early['p99']:.1f} ms"
              + (f"; measured direct-sorted {measured} tx/s" if measured else "") + ")\n")
        print("| variant | grant | max group | member RTs | tx/s | × early | × measured d-s "
              "| commits/fsync | group | p50 ms | p99 ms | p99 ÷ early's | CPU | stretch |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        rows_here = [("early", "-", 0, 1, {})] + (rows or sweep_rows())
        for variant, grant, max_group, member_rts, extra in rows_here:
            if variant == "early":
                f = early
            else:
                f = simulate(variant, clients, hot, binlog, seconds=seconds, seed=seed,
                             grant=grant, max_group=max_group, member_rts=member_rts, **extra)
            grouping = variant.endswith("group")
            label = variant + "".join(f" {k}={v}" for k, v in extra.items())
            versus_measured = f"{f['tx/s'] / measured:.2f}" if measured else "-"
            print(f"| {label} | {grant} | {(max_group or '∞') if grouping else '-'} "
                  f"| {member_rts if grouping else '-'} | {f['tx/s']:.0f} "
                  f"| {f['tx/s'] / early['tx/s']:.2f} | {versus_measured} ", end="")
            print(f"| {f['commits/fsync']:.2f} | {f['group']:.1f} | {f['p50']:.1f} "
                  f"| {f['p99']:.1f} | {f['p99'] / early['p99']:.2f} | {f['cpu']:.0%} "
                  f"| {f['stretch']:.2f} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--clients", type=int, nargs="+", default=[32])
    parser.add_argument("--hot", type=int, nargs="+", default=[10])
    parser.add_argument("--binlog", action="store_true", help="log_bin with sync_binlog = 1")
    parser.add_argument("--grant", nargs="+", default=["ascending"],
                        choices=["ascending", "all-at-once"])
    parser.add_argument("--bypass", type=int, default=4,
                        help="all-at-once: overtakes before a waiter reserves its keys")
    parser.add_argument("--max-group", type=int, nargs="+", default=[16],
                        help="requests per group, leader included (0: unbounded)")
    parser.add_argument("--member-rts", type=int, nargs="+", default=[1], choices=[1, 3],
                        help="round trips per group member")
    parser.add_argument("--join", choices=["scan", "front"], default="scan")
    parser.add_argument("--linger-ms", type=float, default=0.0)
    for name in DEFAULTS[False]:
        parser.add_argument("--" + name.replace("_", "-"), type=float, default=None,
                            help=f"default {DEFAULTS[False][name]} ({DEFAULTS[True][name]} with --binlog)")
    parser.add_argument("--seconds", type=float, default=2.0, help="measured model time")
    parser.add_argument("--warmup", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--calibrate", action="store_true",
                        help="print the model against the measured figures, then exit")
    parser.add_argument("--sweep", action="store_true",
                        help="print README.md's tables for --hot x --clients, then exit")
    args = parser.parse_args()
    if args.calibrate:
        calibrate(args.seconds, args.seed)
        return
    if args.sweep:
        sweep([(h, c, args.binlog) for h in args.hot for c in args.clients],
              args.seconds, args.seed)
        return
    params = {name: getattr(args, name) for name in DEFAULTS[False] if getattr(args, name) is not None}
    print(HEADER)
    for hot in args.hot:
        for clients in args.clients:
            for variant in args.variants:
                grouping = variant.endswith("group")
                for grant in (args.grant if variant != "early" else ["ascending"]):
                    for max_group in (args.max_group if grouping else [0]):
                        for member_rts in (args.member_rts if grouping else [1]):
                            figures = simulate(variant, clients, hot, args.binlog, params,
                                               args.seconds, args.warmup, grant=grant,
                                               max_group=max_group, member_rts=member_rts,
                                               join=args.join, linger_ms=args.linger_ms,
                                               bypass=args.bypass, seed=args.seed)
                            print(line(args.binlog, hot, clients, variant, grant, max_group,
                                       member_rts, figures), flush=True)


if __name__ == "__main__":
    main()
