//! What one client does: the workloads and the operations they draw.
//!
//! Accounts have ids `1..=accounts`. The `hot` accounts of `transfer` and `mixed` are spread
//! evenly over that range (ids `1`, `1 + accounts/hot`, ...), so they sit on different index
//! pages as real hot rows would.

use rand::rngs::StdRng;
use rand::Rng;

/// Every account starts with this balance. Transfers move 1 to 100, so over any run this
/// tool can make (millions of transfers spread over the hot accounts) no balance comes close
/// to zero; the `CHECK (balance >= 0)` on the table and the correctness check would catch it.
pub const INITIAL_BALANCE: i64 = 1_000_000;
/// Largest amount one transfer moves.
pub const MAX_AMOUNT: i64 = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Move an amount between two distinct random hot accounts: two updates in random order.
    Transfer,
    /// One-row update of a random account among all of them.
    Uncontended,
    /// One point select of a random account among all of them (autocommit).
    Read,
    /// 90 % point selects of a random hot account, 10 % transfers among the hot accounts.
    Mixed,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Transfer => "transfer",
            Workload::Uncontended => "uncontended",
            Workload::Read => "read",
            Workload::Mixed => "mixed",
        }
    }
}

/// One operation: the transaction a client runs next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Debit `from` and credit `to` by `amount`, in that (random) order.
    Transfer { from: u32, to: u32, amount: i64 },
    /// `updates = updates + 1` on one row.
    Update { id: u32 },
    /// `SELECT balance` of one row.
    Read { id: u32 },
}

impl Op {
    /// Whether the operation is a write whose commit the correctness check counts.
    pub fn is_update(self) -> bool {
        matches!(self, Op::Update { .. })
    }
}

/// Draws operations for one workload.
#[derive(Clone, Debug)]
pub struct Generator {
    workload: Workload,
    accounts: u32,
    hot_ids: Vec<u32>,
}

impl Generator {
    pub fn new(workload: Workload, accounts: u32, hot: u32) -> Generator {
        let hot = hot.clamp(2, accounts.max(2));
        let stride = (accounts / hot).max(1);
        let hot_ids = (0..hot).map(|i| 1 + i * stride).collect();
        Generator {
            workload,
            accounts,
            hot_ids,
        }
    }

    pub fn next(&self, rng: &mut StdRng) -> Op {
        match self.workload {
            Workload::Transfer => self.transfer(rng),
            Workload::Uncontended => Op::Update {
                id: rng.gen_range(1..=self.accounts),
            },
            Workload::Read => Op::Read {
                id: rng.gen_range(1..=self.accounts),
            },
            Workload::Mixed => {
                if rng.gen_range(0..10) == 0 {
                    self.transfer(rng)
                } else {
                    Op::Read {
                        id: self.hot_ids[rng.gen_range(0..self.hot_ids.len())],
                    }
                }
            }
        }
    }

    fn transfer(&self, rng: &mut StdRng) -> Op {
        let count = self.hot_ids.len();
        let first = rng.gen_range(0..count);
        // A second index drawn among the other count - 1, so the two always differ.
        let mut second = rng.gen_range(0..count - 1);
        if second >= first {
            second += 1;
        }
        Op::Transfer {
            from: self.hot_ids[first],
            to: self.hot_ids[second],
            amount: rng.gen_range(1..=MAX_AMOUNT),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn transfers_use_two_distinct_hot_accounts() {
        let generator = Generator::new(Workload::Transfer, 100_000, 10);
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..10_000 {
            let Op::Transfer { from, to, amount } = generator.next(&mut rng) else {
                panic!("transfer workload drew something else");
            };
            assert_ne!(from, to);
            assert!(generator.hot_ids.contains(&from) && generator.hot_ids.contains(&to));
            assert!((1..=MAX_AMOUNT).contains(&amount));
        }
    }

    #[test]
    fn two_hot_accounts_make_every_transfer_on_the_same_spread_pair() {
        let generator = Generator::new(Workload::Transfer, 100_000, 2);
        // Half the table apart: on different index pages.
        assert_eq!(generator.hot_ids, vec![1, 50_001]);
        let mut rng = StdRng::seed_from_u64(3);
        let (mut forward, mut backward) = (0, 0);
        for _ in 0..10_000 {
            match generator.next(&mut rng) {
                Op::Transfer {
                    from: 1,
                    to: 50_001,
                    ..
                } => forward += 1,
                Op::Transfer {
                    from: 50_001,
                    to: 1,
                    ..
                } => backward += 1,
                other => panic!("not a transfer between the hot pair: {other:?}"),
            }
        }
        // Both directions, so the unsorted clients lock the pair in both orders.
        assert!(
            forward > 4_000 && backward > 4_000,
            "{forward} / {backward}"
        );
    }

    #[test]
    fn hot_accounts_are_spread_and_in_range() {
        let generator = Generator::new(Workload::Mixed, 100_000, 10);
        assert_eq!(generator.hot_ids.len(), 10);
        assert_eq!(generator.hot_ids[0], 1);
        assert!(generator
            .hot_ids
            .iter()
            .all(|id| (1..=100_000).contains(id)));
        let tiny = Generator::new(Workload::Transfer, 3, 10);
        assert_eq!(tiny.hot_ids, vec![1, 2, 3]);
    }
}
