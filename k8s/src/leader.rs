//! Leader election on a `coordination.k8s.io` Lease (kube-lease-manager), and the check
//! that the CRDs a component needs are installed.

use std::future::Future;
use std::time::Duration;

use kube::api::{Api, ListParams};
use kube::{Client, Resource};
use kube_lease_manager::LeaseManagerBuilder;
use tokio_util::sync::CancellationToken;

use crate::Error;

/// Fails with [`Error::MissingCrd`] when the API server does not know `K` (its CRD is not
/// installed), so a component says so at start-up instead of retrying forever.
pub async fn require_crd<K>(client: &Client, namespace: &str) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(e) if crate::is_not_found(&e) => {
            Err(Error::MissingCrd { crd: format!("{}.{}", K::plural(&()), K::group(&())), kind: kind::<K>() })
        }
        Err(e) => Err(e.into()),
    }
}

fn kind<K: Resource<DynamicType = ()>>() -> &'static str {
    // The kinds are static strings in their derives.
    match K::kind(&()) {
        std::borrow::Cow::Borrowed(kind) => kind,
        std::borrow::Cow::Owned(_) => "a custom resource",
    }
}

/// Runs `work` while this process holds the Lease `lease` in `namespace`, as `identity`.
/// When leadership is lost the work's token is cancelled and it is restarted once the
/// lease is won again. Returns when `shutdown` is cancelled (after the work returns).
pub async fn run_as_leader<F, Fut>(
    client: Client,
    namespace: &str,
    lease: &str,
    identity: &str,
    duration: Duration,
    shutdown: CancellationToken,
    mut work: F,
) -> Result<(), Error>
where
    F: FnMut(CancellationToken) -> Fut,
    Fut: Future<Output = ()>,
{
    let manager = LeaseManagerBuilder::new(client, lease)
        .with_namespace(namespace)
        .with_identity(identity)
        .with_duration(duration.as_secs().max(2))
        .with_grace(duration.as_secs().max(2) / 3)
        .build()
        .await
        .map_err(|e| Error::Invalid(format!("leader election on Lease {namespace}/{lease}: {e}")))?;
    let (mut leading, task) = manager.watch().await;
    loop {
        if *leading.borrow_and_update() {
            tracing::info!(lease, identity, "leading");
            let lost = shutdown.child_token();
            let watcher = {
                let lost = lost.clone();
                let mut leading = leading.clone();
                async move {
                    while leading.changed().await.is_ok() {
                        if !*leading.borrow() {
                            break;
                        }
                    }
                    tracing::warn!("lost the lease; stopping until it is won again");
                    lost.cancel();
                }
            };
            tokio::select! {
                () = work(lost.clone()) => {}
                () = watcher => {}
            }
            lost.cancel();
        }
        if shutdown.is_cancelled() {
            break;
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            changed = leading.changed() => if changed.is_err() { break },
        }
    }
    drop(leading);
    match task.await {
        Ok(Ok(_manager)) => Ok(()),
        Ok(Err(e)) => Err(Error::Invalid(format!("leader election on Lease {namespace}/{lease}: {e}"))),
        Err(e) => Err(Error::Invalid(format!("leader election task: {e}"))),
    }
}
