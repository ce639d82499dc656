//! `least-outstanding`: the candidate with the fewest queries in flight (live counts from the
//! host); ties alternate. Put it after `read-write-split` to balance reads across replicas.
//! No config.

use switchyard_sdk::pick::{least_outstanding, RoundRobin};
use switchyard_sdk::{export_policy, host, Candidates, Decision, Policy, Query};

pub struct LeastOutstanding {
    tie: RoundRobin,
}

impl Policy for LeastOutstanding {
    fn init(config: &str) -> Result<Self, String> {
        if !config.trim().is_empty() {
            return Err("least-outstanding takes no config".into());
        }
        Ok(LeastOutstanding {
            tie: RoundRobin::default(),
        })
    }

    fn session_events(&self) -> bool {
        false
    }

    fn route(&mut self, _query: &Query, candidates: Candidates) -> Decision {
        least_outstanding(candidates, &mut self.tie, host::in_flight)
            .map_or(Decision::Abstain, Decision::Backend)
    }
}

export_policy!(LeastOutstanding);
