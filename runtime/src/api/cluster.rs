//! `GET /v1/cluster`: the nodes and the units (so the gates) each owns. Any node
//! answers it itself, from the database (never forwarded), so it shows the
//! cluster as this node sees it.

use super::*;
use crate::core::units::Units;
use wire::{ClusterView, NodeView};

#[utoipa::path(
    get,
    path = "/cluster",
    tag = "meta",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The nodes, with the units and gates each owns", body = ClusterView),
        (status = 503, description = "The database did not answer", body = ErrorBody),
    )
)]
pub(super) async fn cluster(State(state): State<AppState>) -> Result<Json<ClusterView>, ApiError> {
    let store = state.store.clone();
    let gates = tokio::task::spawn_blocking(move || -> Result<Vec<String>, ApiError> {
        Ok(store.read()?.gates()?.into_iter().map(|g| g.name).collect())
    })
    .await
    .map_err(|e| ApiError::internal(&e))??;
    let Some(cluster) = &state.cluster else {
        return Ok(Json(ClusterView {
            store: "redb".into(),
            node: "local".into(),
            nodes: vec![NodeView {
                id: "local".into(),
                address: None,
                last_heartbeat_s: 0.0,
                started_at: None,
                gates_owned: gates.len(),
                units: Units::ALL.iter().collect(),
            }],
        }));
    };
    let nodes = cluster.nodes().await.map_err(|e| {
        ApiError::unavailable(format!("the cluster's database did not answer: {e}"))
    })?;
    Ok(Json(ClusterView {
        store: "postgres".into(),
        node: cluster.id().to_string(),
        nodes: nodes.iter().map(|n| NodeView::of(n, &gates)).collect(),
    }))
}
