//! The bookinfo topology shared by the demo (`make run`) and the e2e tests, so the tests prove
//! exactly what the demo runs: productpage → details and reviews (v1, v2, v3); reviews v2/v3 →
//! ratings. Apps call each other through their sidecars with Istio's short names.

use crate::app::{App, Call};
use crate::mesh::MeshBuilder;

/// A call from an app to `service:9080` through its own sidecar.
pub fn call(service: &str, path: &str) -> Call {
    Call { service: service.into(), host: format!("{service}:9080"), path: path.into(), via_port: 0 }
}

/// Adds the six bookinfo workloads (their WorkloadEntries are in examples/bookinfo).
pub fn workloads(builder: MeshBuilder) -> MeshBuilder {
    builder
        .sidecar(
            "default/productpage-v1",
            App::new("productpage", "v1").calling(call("details", "/details/0")).calling(call("reviews", "/reviews/0")),
        )
        .sidecar("default/details-v1", App::new("details", "v1"))
        .sidecar("default/reviews-v1", App::new("reviews", "v1"))
        .sidecar("default/reviews-v2", App::new("reviews", "v2").calling(call("ratings", "/ratings/0")))
        .sidecar("default/reviews-v3", App::new("reviews", "v3").calling(call("ratings", "/ratings/0")))
        .sidecar("default/ratings-v1", App::new("ratings", "v1"))
}
