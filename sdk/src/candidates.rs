//! The set of backends still allowed for a query: a bit mask of backend ids (ids below 64).

/// Candidate backends as a bit mask: bit `id` set means backend `id` may be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Candidates(pub u64);

impl Candidates {
    /// The empty set.
    pub const NONE: Candidates = Candidates(0);

    /// Whether backend `id` is a candidate.
    pub fn contains(self, id: u32) -> bool {
        id < 64 && self.0 & (1 << id) != 0
    }

    /// How many candidates there are.
    pub fn len(self) -> u32 {
        self.0.count_ones()
    }

    /// Whether no backend is left.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The candidates' ids, in increasing order.
    pub fn ids(self) -> impl Iterator<Item = u32> {
        let mut bits = self.0;
        std::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let id = bits.trailing_zeros();
            bits &= bits - 1;
            Some(id)
        })
    }

    /// The candidates that are also in `other`.
    pub fn and(self, other: Candidates) -> Candidates {
        Candidates(self.0 & other.0)
    }

    /// A set of the given ids.
    pub fn from_ids(ids: impl IntoIterator<Item = u32>) -> Candidates {
        Candidates(
            ids.into_iter()
                .filter(|&i| i < 64)
                .fold(0, |m, i| m | (1 << i)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_operations() {
        let c = Candidates::from_ids([0, 2, 5]);
        assert!(c.contains(2) && !c.contains(1) && !c.contains(64));
        assert_eq!(c.len(), 3);
        assert_eq!(c.ids().collect::<Vec<_>>(), vec![0, 2, 5]);
        assert_eq!(
            c.and(Candidates::from_ids([2, 3])),
            Candidates::from_ids([2])
        );
        assert!(Candidates::NONE.is_empty());
    }
}
