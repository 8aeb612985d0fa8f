#!/usr/bin/env python3
"""A discrete-event model of `transfer` under contention: why keys held through COMMIT's
fsync cap the broker below InnoDB's own row locks, and what FIFO order costs in the tail.

Each of C clients runs transfers back to back: two distinct keys out of H, taken in
ascending order, one at a time, each key with a FIFO queue, and a transaction keeps the
lower key while it waits for the higher one (protocol v1, step 1). Once it holds both, its
statements take STATEMENTS ms; then it commits. Commits are flushed by a single redo log:
a flush takes FSYNC ms, and a commit that arrives while a flush runs waits for the next one
(group commit: every commit waiting when a flush starts is in it).

Variants:
  broker        keys released when COMMIT has answered, after the flush (protocol step 5)
  early         keys released when COMMIT is sent, before the flush: what InnoDB does
                with row locks (direct-sorted); unsafe for broker keys (see bench/README.md)
  strict-fifo   as broker, but a transaction joins the queue of every key it asks for
                when it arrives (no later request ever goes first on any key)
  admission     as broker, behind an arrival-ordered admission queue: a transaction enters
                its keys' queues only when each has fewer than ADMIT_BELOW waiters and no
                earlier transaction still in admission shares a key with it (not built)

Standard library only; deterministic for a given --seed.
"""
import argparse
import collections
import heapq
import random


ADMIT_BELOW = 2


def simulate(variant, clients, hot, statements_ms, fsync_ms, duration_ms, seed):
    rng = random.Random(seed)
    admission = collections.deque()
    queues = {key: collections.deque() for key in range(hot)}
    holder = {}
    transactions = {}
    events = []
    sequence = 0
    waiting_for_flush = []
    flushing = False
    committed = 0
    flushes = 0
    latencies = []

    def schedule(at, kind, payload):
        nonlocal sequence
        sequence += 1
        heapq.heappush(events, (at, sequence, kind, payload))

    def arrive(client, now):
        nonlocal sequence
        sequence += 1
        low, high = sorted(rng.sample(range(hot), 2))
        transactions[sequence] = {"client": client, "keys": (low, high), "held": 0, "start": now}
        if variant == "admission":
            admission.append(sequence)
            return
        queues[low].append(sequence)
        if variant == "strict-fifo":
            queues[high].append(sequence)

    def admit():
        shared_with_earlier = set()
        for tx_id in list(admission):
            keys = set(transactions[tx_id]["keys"])
            if not keys & shared_with_earlier and all(len(queues[k]) < ADMIT_BELOW for k in keys):
                admission.remove(tx_id)
                queues[transactions[tx_id]["keys"][0]].append(tx_id)
            shared_with_earlier |= keys

    def grant(now):
        admit()
        progress = True
        while progress:
            progress = False
            for key, queue in queues.items():
                if not queue or key in holder:
                    continue
                tx_id = queue[0]
                tx = transactions[tx_id]
                if tx["keys"][tx["held"]] != key:
                    continue  # strict-fifo: its lower key comes first
                queue.popleft()
                holder[key] = tx_id
                tx["held"] += 1
                progress = True
                if tx["held"] == 2:
                    schedule(now + statements_ms, "commit", tx_id)
                elif variant != "strict-fifo":
                    queues[tx["keys"][1]].append(tx_id)
                admit()

    def release(tx_id, now):
        for key in transactions[tx_id]["keys"]:
            if holder.get(key) == tx_id:
                del holder[key]
        grant(now)

    def start_flush(now):
        nonlocal flushing, flushes
        if waiting_for_flush and not flushing:
            flushing = True
            flushes += 1
            schedule(now + fsync_ms, "flushed", tuple(waiting_for_flush))
            waiting_for_flush.clear()

    for client in range(clients):
        arrive(client, 0.0)
    grant(0.0)
    while events:
        now, _, kind, payload = heapq.heappop(events)
        if now > duration_ms:
            break
        if kind == "commit":
            waiting_for_flush.append(payload)
            if variant == "early":
                release(payload, now)
            start_flush(now)
        else:
            flushing = False
            for tx_id in payload:
                if variant != "early":
                    release(tx_id, now)
                tx = transactions.pop(tx_id)
                committed += 1
                latencies.append(now - tx["start"])
                arrive(tx["client"], now)
            grant(now)
            start_flush(now)
    latencies.sort()
    seconds = duration_ms / 1000
    return {
        "tx/s": committed / seconds,
        "fsyncs/s": flushes / seconds,
        "commits/fsync": committed / max(flushes, 1),
        "p50 ms": latencies[len(latencies) // 2],
        "p99 ms": latencies[int(len(latencies) * 0.99)],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--hot", type=int, default=10)
    parser.add_argument("--statements-ms", type=float, default=0.35,
                        help="two UPDATEs and the hand-off to the next holder")
    parser.add_argument("--fsync-ms", type=float, default=0.85,
                        help="one redo-log flush (about 1 / the fsyncs per second measured)")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(f"{'clients':>7} {'variant':<12} {'tx/s':>7} {'fsyncs/s':>8} {'commits/fsync':>13} {'p50 ms':>7} {'p99 ms':>7}")
    for clients in args.clients:
        for variant in ("broker", "strict-fifo", "admission", "early"):
            figures = simulate(variant, clients, args.hot, args.statements_ms, args.fsync_ms,
                               args.seconds * 1000, args.seed)
            print(f"{clients:>7} {variant:<12} {figures['tx/s']:>7.0f} {figures['fsyncs/s']:>8.0f} "
                  f"{figures['commits/fsync']:>13.2f} {figures['p50 ms']:>7.1f} {figures['p99 ms']:>7.1f}")


if __name__ == "__main__":
    main()
