//! The image watch: every `--image-check-interval-secs`, each online server's pulled
//! images are checked against their registries (one request per reference per pass,
//! through the checker and cache the API uses), and an update newly seen is sent to the
//! notifiers as `image.update_available`. "Newly" is kept by the delivery log itself: the
//! event's subject names the server, the reference and the registry's digest, and a
//! notifier never gets the same subject twice — so a restart does not announce it again,
//! and a tag that moves once more is a new event.

use crate::images::{self, Checked, Credential, ImageRef};
use crate::state::AppState;
use mezzanine_proto::v1::{command, reply, DockerListImages};
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Announces `update_available` for each of `images` (repo tags, repo digests) on
/// `server` whose check found the registry serving another digest.
pub async fn announce(
    state: &AppState,
    server_id: i64,
    server: &str,
    found: impl IntoIterator<Item = (ImageRef, Vec<String>, Checked)>,
) {
    for (r, local, checked) in found {
        let Ok(remote) = &checked.digest else {
            continue;
        };
        // Never pulled here (built or loaded on the server): nothing to compare, even if
        // another server's pull of the same tag was checked.
        if local.is_empty() || local.iter().any(|l| l == remote) {
            continue;
        }
        let image = format!("{}/{}:{}", r.registry, r.repository, r.tag);
        let subject = format!("image:{server_id}:{image}@{remote}");
        state
            .notifier()
            .emit(
                "image.update_available",
                &subject,
                json!({
                    "server_id": server_id, "server": server, "image": image,
                    "local_digests": local, "remote_digest": remote,
                }),
            )
            .await;
    }
}

/// One pass over the fleet.
async fn pass(state: &AppState) {
    let Ok(checker) = state.updates() else {
        return;
    };
    let servers = match state.store().servers().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "image watch: cannot list servers");
            return;
        }
    };
    let fleet = &state.gateway().fleet;
    // This pass's answers: a fleet running one image makes one request for it.
    let mut answers: HashMap<ImageRef, Checked> = HashMap::new();
    let mut credentials: HashMap<String, Option<Credential>> = HashMap::new();
    for s in &servers {
        // Attached here or to another living controller (the stored status can lag).
        if !fleet.is_attached(s.id).await {
            continue;
        }
        let cmd = command::Body::DockerListImages(DockerListImages {});
        let list = match fleet.call(s.id, cmd, state.config().docker_timeout).await {
            Ok(reply::Body::DockerImages(list)) => list,
            // No Docker, or the agent went away: nothing to check there now.
            _ => continue,
        };
        let mut found = Vec::new();
        for img in &list.images {
            let Ok((r, local)) = images::plan(&img.repo_tags, &img.repo_digests) else {
                continue;
            };
            if local.is_empty() {
                continue;
            }
            let checked = match answers.get(&r) {
                Some(c) => c.clone(),
                None => {
                    if !credentials.contains_key(&r.registry) {
                        let c = images::registry_credential(state.store(), state.key(), &r.registry)
                            .await
                            .unwrap_or_else(|e| {
                                tracing::warn!(registry = %r.registry, error = %e, "image watch: no credential");
                                None
                            });
                        credentials.insert(r.registry.clone(), c);
                    }
                    let cred = credentials.get(&r.registry).cloned().flatten();
                    let c = checker.check(&r, cred).await;
                    answers.insert(r.clone(), c.clone());
                    c
                }
            };
            found.push((r, local, checked));
        }
        announce(state, s.id, &s.name, found).await;
    }
}

/// Checks the fleet every `every` until `closing`.
pub async fn run(state: AppState, every: Duration, closing: CancellationToken) {
    loop {
        tokio::select! {
            () = closing.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        // A pass may wait on registries and agents; shutting down does not.
        tokio::select! {
            () = closing.cancelled() => return,
            () = pass(&state) => {}
        }
    }
}
