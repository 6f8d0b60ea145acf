//! The checkpoint stores a game server opens.

use std::sync::Arc;

use gaia_checkpoint::Tier;

use crate::{Config, Error};

/// Opens the checkpoint tiers the config names: hot first, then durable. An empty URL
/// counts as unset, so a fleet template can turn off a store its deployment sets. Also
/// answers the durable tier's SQL store, when it is one, for the activity log to share.
pub(crate) async fn open_tiers(config: &Config) -> Result<(Vec<Tier>, Option<gaia_checkpoint::SqlStore>), Error> {
    let mut tiers = Vec::new();
    let mut sql = None;
    let set = |url: &Option<String>| url.clone().filter(|u| !u.is_empty());
    let hot = set(&config.redis_url).is_some();
    for (url, every) in [
        (set(&config.redis_url), config.checkpoint_every),
        (set(&config.database_url), if hot { config.durable_every } else { config.checkpoint_every }),
    ] {
        let Some(url) = url else { continue };
        let failed = |source| Error::Store { url: gaia_checkpoint::redact(&url), source };
        let store: Arc<dyn gaia_checkpoint::Store> = if url.starts_with("postgres") || url.starts_with("sqlite:") {
            let store = gaia_checkpoint::SqlStore::connect(&url).await.map_err(failed)?;
            sql = Some(store.clone());
            Arc::new(store)
        } else {
            // Redis, or a URL `open` refuses with its reason.
            gaia_checkpoint::open(&url).await.map_err(failed)?
        };
        tiers.push(Tier { store, every });
    }
    Ok((tiers, sql))
}
