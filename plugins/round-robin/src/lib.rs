//! `round-robin`: each candidate in turn (per proxy worker). No config.

use switchyard_sdk::pick::RoundRobin;
use switchyard_sdk::{export_policy, Candidates, Decision, Policy, Query};

pub struct Rotate {
    rr: RoundRobin,
}

impl Policy for Rotate {
    fn init(config: &str) -> Result<Self, String> {
        if !config.trim().is_empty() {
            return Err("round-robin takes no config".into());
        }
        Ok(Rotate {
            rr: RoundRobin::default(),
        })
    }

    fn session_events(&self) -> bool {
        false
    }

    fn route(&mut self, _query: &Query, candidates: Candidates) -> Decision {
        self.rr
            .pick(candidates)
            .map_or(Decision::Abstain, Decision::Backend)
    }
}

export_policy!(Rotate);
