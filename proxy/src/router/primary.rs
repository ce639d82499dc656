//! The routing policy that needs no configuration: everything goes to the primary.

use super::{Route, RouteRequest, Router};

/// Sends every transaction to the primary. The default, and the safe fallback.
#[derive(Debug, Default, Clone, Copy)]
pub struct PrimaryOnly;

impl Router for PrimaryOnly {
    fn route(&self, _request: &RouteRequest<'_>) -> Route {
        Route::Primary
    }

    fn reads_requests(&self) -> bool {
        false
    }
}
