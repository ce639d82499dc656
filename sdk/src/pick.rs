//! Pickers: choosing one backend among candidates. Each is small enough to read in a minute;
//! state (a counter, a seed) lives in the policy and is per instance (per proxy worker).

use crate::Candidates;

/// Round robin: the candidate after the one picked last time.
#[derive(Debug, Default, Clone)]
pub struct RoundRobin {
    next: u64,
}

impl RoundRobin {
    pub fn pick(&mut self, candidates: Candidates) -> Option<u32> {
        let n = candidates.len() as u64;
        if n == 0 {
            return None;
        }
        let i = self.next % n;
        self.next = self.next.wrapping_add(1);
        candidates.ids().nth(i as usize)
    }
}

/// Uniformly random (xorshift; seeded by the policy, e.g. from the host clock).
#[derive(Debug, Clone)]
pub struct Random {
    state: u64,
}

impl Random {
    pub fn new(seed: u64) -> Self {
        Random { state: seed | 1 }
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        x
    }

    pub fn pick(&mut self, candidates: Candidates) -> Option<u32> {
        let n = candidates.len() as u64;
        if n == 0 {
            return None;
        }
        candidates.ids().nth((self.next_u64() % n) as usize)
    }
}

/// Smooth weighted round robin (as in nginx): over time each candidate gets its weight's share,
/// spread evenly rather than in bursts.
#[derive(Debug, Clone)]
pub struct Weighted {
    current: [i64; 64],
}

impl Default for Weighted {
    fn default() -> Self {
        Weighted { current: [0; 64] }
    }
}

impl Weighted {
    /// `weight(id)` gives each backend's weight; weight 0 excludes it.
    pub fn pick(&mut self, candidates: Candidates, weight: impl Fn(u32) -> u32) -> Option<u32> {
        let mut total = 0i64;
        let mut best: Option<u32> = None;
        for id in candidates.ids() {
            let w = weight(id) as i64;
            if w == 0 {
                continue;
            }
            self.current[id as usize] += w;
            total += w;
            if best.is_none_or(|b| self.current[id as usize] > self.current[b as usize]) {
                best = Some(id);
            }
        }
        let b = best?;
        self.current[b as usize] -= total;
        Some(b)
    }
}

/// Least outstanding: the candidate with the fewest queries in flight (`load(id)`, usually
/// [`crate::host::in_flight`]); ties go round robin so equal backends share the load.
pub fn least_outstanding(
    candidates: Candidates,
    tie: &mut RoundRobin,
    load: impl Fn(u32) -> u32,
) -> Option<u32> {
    // One load reading per candidate (each is a host call).
    let mut least = Candidates::NONE;
    let mut min = u32::MAX;
    for id in candidates.ids() {
        let l = load(id);
        if l < min {
            min = l;
            least = Candidates::from_ids([id]);
        } else if l == min {
            least = Candidates(least.0 | (1 << id));
        }
    }
    tie.pick(least)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_alternates() {
        let mut rr = RoundRobin::default();
        let c = Candidates::from_ids([1, 2]);
        let picks: Vec<_> = (0..4).map(|_| rr.pick(c).unwrap()).collect();
        assert_eq!(picks, vec![1, 2, 1, 2]);
        assert_eq!(rr.pick(Candidates::NONE), None);
    }

    #[test]
    fn weighted_follows_weights() {
        let mut w = Weighted::default();
        let c = Candidates::from_ids([1, 2]);
        let mut counts = [0; 3];
        for _ in 0..400 {
            counts[w.pick(c, |id| if id == 1 { 3 } else { 1 }).unwrap() as usize] += 1;
        }
        assert_eq!((counts[1], counts[2]), (300, 100));
    }

    #[test]
    fn least_outstanding_avoids_the_busy_one() {
        let mut tie = RoundRobin::default();
        let c = Candidates::from_ids([1, 2]);
        for _ in 0..5 {
            assert_eq!(
                least_outstanding(c, &mut tie, |id| if id == 1 { 7 } else { 0 }),
                Some(2)
            );
        }
        let both: Vec<_> = (0..4)
            .map(|_| least_outstanding(c, &mut tie, |_| 0).unwrap())
            .collect();
        assert!(both.contains(&1) && both.contains(&2));
    }

    #[test]
    fn random_stays_within_candidates() {
        let mut r = Random::new(42);
        let c = Candidates::from_ids([3, 9]);
        let mut seen = [false; 64];
        for _ in 0..100 {
            seen[r.pick(c).unwrap() as usize] = true;
        }
        assert!(seen[3] && seen[9]);
    }
}
