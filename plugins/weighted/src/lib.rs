//! `weighted`: candidates in proportion to their weights, spread evenly (smooth weighted round
//! robin). Weights come from the policy's config by server name (`weights = { replica1 = 3 }`),
//! else from the server's `weight` in the pool config; weight 0 excludes a server.

use serde::Deserialize;
use std::collections::BTreeMap;
use switchyard_sdk::pick::Weighted;
use switchyard_sdk::{export_policy, Candidates, Decision, Policy, Query, Topology};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    weights: BTreeMap<String, u32>,
}

pub struct ByWeight {
    config: Config,
    weights: [u32; 64],
    picker: Weighted,
}

impl Policy for ByWeight {
    fn init(config: &str) -> Result<Self, String> {
        let config: Config =
            toml::from_str(config).map_err(|e| format!("weighted: {}", e.message()))?;
        Ok(ByWeight {
            config,
            weights: [1; 64],
            picker: Weighted::default(),
        })
    }

    fn topology_changed(&mut self, topology: &Topology) {
        for b in &topology.backends {
            if (b.id as usize) < 64 {
                self.weights[b.id as usize] = self
                    .config
                    .weights
                    .get(&b.name)
                    .copied()
                    .unwrap_or(b.weight);
            }
        }
    }

    fn session_events(&self) -> bool {
        false
    }

    fn route(&mut self, _query: &Query, candidates: Candidates) -> Decision {
        let weights = self.weights;
        self.picker
            .pick(candidates, |id| weights[id as usize])
            .map_or(Decision::Abstain, Decision::Backend)
    }
}

export_policy!(ByWeight);

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_sdk::{Backend, Role};

    #[test]
    fn config_weights_by_name_override_topology_weights() {
        let mut p = ByWeight::init("weights = { replica1 = 3 }").unwrap();
        let b = |id, name: &str| Backend {
            id,
            name: name.into(),
            role: Role::Replica,
            healthy: true,
            weight: 1,
        };
        p.topology_changed(&Topology {
            generation: 1,
            backends: vec![b(1, "replica1"), b(2, "replica2")],
        });
        assert_eq!((p.weights[1], p.weights[2]), (3, 1));
        assert!(ByWeight::init("weights = 3").is_err());
    }
}
