//! `random`: a uniformly random candidate (seeded from the host clock; per proxy worker).
//! No config.

use switchyard_sdk::pick::Random;
use switchyard_sdk::{export_policy, host, Candidates, Decision, Policy, Query};

pub struct Uniform {
    rng: Option<Random>,
}

impl Policy for Uniform {
    fn init(config: &str) -> Result<Self, String> {
        if !config.trim().is_empty() {
            return Err("random takes no config".into());
        }
        Ok(Uniform { rng: None })
    }

    fn session_events(&self) -> bool {
        false
    }

    fn route(&mut self, query: &Query, candidates: Candidates) -> Decision {
        let rng = self.rng.get_or_insert_with(|| {
            Random::new(host::now_ms() ^ (u64::from(query.session_id) << 32))
        });
        rng.pick(candidates)
            .map_or(Decision::Abstain, Decision::Backend)
    }
}

export_policy!(Uniform);
