//! Which waiting batch gets the next worker slot: owners share the slots, and each owner's
//! batches go earliest deadline first.
//!
//! Each next slot goes to the owner holding the fewest slots for its weight
//! (`--owner-weight OWNER=W`, default 1) among owners with batches waiting and below their cap
//! (`--owner-max-batches`); ties go to the owner served least recently, then to the earlier
//! deadline. So one owner's flood waits behind nobody's single batch, and a batch with a close
//! deadline goes before its owner's older ones. A batch whose window is feasible is never
//! starved: its owner's turn comes within one round of the owners, and within the owner it
//! moves up as its deadline nears.

use std::collections::{HashMap, VecDeque};

use crate::store::Claimable;

/// The operator's shares.
#[derive(Debug, Clone, Default)]
pub struct Shares {
    pub weights: HashMap<String, f64>,
    /// Slots one owner may hold at once across the deployment; none: no cap.
    pub max_batches: Option<usize>,
}

impl Shares {
    fn weight(&self, owner: &str) -> f64 {
        self.weights
            .get(owner)
            .copied()
            .filter(|w| *w > 0.0)
            .unwrap_or(1.0)
    }
}

/// When each owner was last given a slot by this scheduler (a counter: larger is later).
#[derive(Debug, Default)]
pub struct Turns {
    last: HashMap<String, u64>,
    next: u64,
}

impl Turns {
    pub fn served(&mut self, owner: &str) {
        self.next += 1;
        self.last.insert(owner.to_owned(), self.next);
    }

    fn last(&self, owner: &str) -> u64 {
        self.last.get(owner).copied().unwrap_or(0)
    }
}

/// `candidates` (in deadline order, as the store gives them) in the order their claims should
/// be tried, given the slots each owner holds (`running`); owners at their cap get no more.
pub fn order(
    candidates: Vec<Claimable>,
    running: &HashMap<String, i64>,
    shares: &Shares,
    turns: &Turns,
) -> Vec<Claimable> {
    let mut queues: HashMap<String, VecDeque<Claimable>> = HashMap::new();
    for c in candidates {
        queues.entry(c.owner.clone()).or_default().push_back(c);
    }
    let mut held: HashMap<String, i64> = running.clone();
    let mut ordered = Vec::new();
    loop {
        let next = queues
            .iter()
            .filter(|(owner, queue)| {
                let holds = held.get(*owner).copied().unwrap_or(0);
                !queue.is_empty()
                    && shares
                        .max_batches
                        .is_none_or(|cap| usize::try_from(holds).unwrap_or(0) < cap)
            })
            .min_by(|(a, qa), (b, qb)| {
                let load =
                    |o: &str| (held.get(o).copied().unwrap_or(0) + 1) as f64 / shares.weight(o);
                let deadline =
                    |q: &VecDeque<Claimable>| q.front().map(|c| (c.expires_at, c.id.clone()));
                load(a)
                    .total_cmp(&load(b))
                    .then(turns.last(a).cmp(&turns.last(b)))
                    .then(deadline(qa).cmp(&deadline(qb)))
            })
            .map(|(owner, _)| owner.clone());
        let Some(owner) = next else {
            return ordered;
        };
        if let Some(c) = queues.get_mut(&owner).and_then(VecDeque::pop_front) {
            ordered.push(c);
        }
        *held.entry(owner).or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(id: &str, owner: &str, expires_at: i64) -> Claimable {
        Claimable {
            id: id.into(),
            fence: 0,
            owner: owner.into(),
            expires_at,
        }
    }

    fn ids(v: &[Claimable]) -> Vec<&str> {
        v.iter().map(|c| c.id.as_str()).collect()
    }

    #[test]
    fn owners_take_turns_and_deadlines_lead_within_an_owner() {
        // Owner a floods; its 1-hour batch came last but goes first among its own.
        let waiting = vec![
            batch("a1", "a", 100),
            batch("a2", "a", 101),
            batch("b1", "b", 102),
            batch("a3", "a", 103),
        ];
        let mut sorted = waiting.clone();
        sorted.push(batch("a-urgent", "a", 50));
        sorted.sort_by_key(|c| c.expires_at);
        let running = HashMap::from([("a".to_owned(), 1)]);
        let shares = Shares::default();
        let order = order(sorted, &running, &shares, &Turns::default());
        assert_eq!(ids(&order), ["b1", "a-urgent", "a1", "a2", "a3"]);
    }

    #[test]
    fn the_owner_served_least_recently_goes_first_and_caps_hold() {
        let waiting = vec![
            batch("a1", "a", 1),
            batch("b1", "b", 2),
            batch("a2", "a", 3),
        ];
        let mut turns = Turns::default();
        turns.served("a");
        let none = HashMap::new();
        assert_eq!(
            ids(&order(waiting.clone(), &none, &Shares::default(), &turns)),
            ["b1", "a1", "a2"]
        );
        let capped = Shares {
            max_batches: Some(1),
            ..Shares::default()
        };
        let running = HashMap::from([("a".to_owned(), 1)]);
        assert_eq!(ids(&order(waiting, &running, &capped, &turns)), ["b1"]);
    }

    #[test]
    fn weights_share_the_slots() {
        let mut waiting = Vec::new();
        for i in 0..6 {
            waiting.push(batch(&format!("a{i}"), "a", i));
            waiting.push(batch(&format!("b{i}"), "b", i));
        }
        waiting.sort_by_key(|c| c.expires_at);
        let shares = Shares {
            weights: HashMap::from([("a".to_owned(), 2.0)]),
            max_batches: None,
        };
        let first6: Vec<String> = order(waiting, &HashMap::new(), &shares, &Turns::default())
            .into_iter()
            .take(6)
            .map(|c| c.owner)
            .collect();
        assert_eq!(first6.iter().filter(|o| *o == "a").count(), 4, "{first6:?}");
    }
}
