//! The settings outside the pools that a reload (`SIGHUP`, `RELOAD`) changes while the proxy
//! runs: the `[general]` timeouts and limits, and the admin console's users. Each is read
//! where it is used (an `arc-swap` load: no lock), so the next use sees the new value.
//!
//! What only a restart changes (listen addresses, worker threads, socket options, the
//! console's database name) is read from the config the proxy started with (`Proxy::config`).

use crate::config::{AdminUserConfig, General};
use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The live copy of the reloadable settings outside the pools.
#[derive(Debug)]
pub struct LiveSettings {
    general: ArcSwap<General>,
    /// The admin console's users (empty without an `[admin]` table).
    admin_users: ArcSwap<BTreeMap<String, AdminUserConfig>>,
}

impl LiveSettings {
    /// The settings of the config the proxy starts with.
    pub fn new(general: &General, admin_users: Option<&BTreeMap<String, AdminUserConfig>>) -> Self {
        LiveSettings {
            general: ArcSwap::from_pointee(general.clone()),
            admin_users: ArcSwap::from_pointee(admin_users.cloned().unwrap_or_default()),
        }
    }

    /// The `[general]` settings now: read one where it is used, not across a wait.
    pub fn general(&self) -> arc_swap::Guard<Arc<General>> {
        self.general.load()
    }

    /// The admin console user `name` now, if there is one.
    pub fn admin_user(&self, name: &str) -> Option<AdminUserConfig> {
        self.admin_users.load().get(name).cloned()
    }

    /// Publishes reloaded settings; `admin_users` is `None` when they stay as they are.
    pub fn replace(
        &self,
        general: General,
        admin_users: Option<BTreeMap<String, AdminUserConfig>>,
    ) {
        self.general.store(Arc::new(general));
        if let Some(users) = admin_users {
            self.admin_users.store(Arc::new(users));
        }
    }
}
