"""Run in child processes by test_concurrency.py (importable under the spawn start method)."""

import random

import txbroker


def transfer(args):
    """Moves money between random accounts, half through one-shot ``tx`` requests and half
    through interactive read-modify-write transactions; both declare their keys. Returns the
    number of committed transfers and the largest ``attempts`` seen."""
    host, port, table, accounts, transfers, seed = args
    rng = random.Random(seed)
    done = 0
    max_attempts = 1
    with txbroker.Client(host, port, timeout=60) as client:
        for n in range(transfers):
            a, b = rng.sample(range(1, accounts + 1), 2)
            amount = rng.randint(1, 20)
            keys = [f"accounts:{a}", f"accounts:{b}"]
            if n % 2 == 0:
                result = client.tx(
                    [
                        (f"UPDATE {table} SET balance = balance - ? WHERE id = ?", [amount, a]),
                        (f"UPDATE {table} SET balance = balance + ? WHERE id = ?", [amount, b]),
                    ],
                    locks=keys,
                )
                max_attempts = max(max_attempts, result.attempts)
            else:
                # Read, compute in Python, write back: a lost update without the keys.
                with client.transaction(locks=keys) as t:
                    rows = t.exec(f"SELECT id, balance FROM {table} WHERE id IN (?, ?)",
                                  [a, b]).rows
                    balance = {row[0]: row[1] for row in rows}
                    t.exec(f"UPDATE {table} SET balance = ? WHERE id = ?",
                           [balance[a] - amount, a])
                    t.exec(f"UPDATE {table} SET balance = ? WHERE id = ?",
                           [balance[b] + amount, b])
            done += 1
    return done, max_attempts
