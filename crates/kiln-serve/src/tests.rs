//! The routes over a model whose forward pass is a test double: a panicking batch, readiness
//! of a stopped worker.

use super::*;
use crate::batcher::Batcher;
use crate::model::Body;
use tower::ServiceExt;

/// A one-feature, two-class network whose forward pass panics on a row holding 13 and
/// overflows (logits `inf`, `-inf`) on a row holding 7.
fn model(metrics: Arc<Metrics>) -> ServedModel {
    let preprocessor = serde_json::from_value(json!({
        "version": 1,
        "features": [{"type": "numeric", "name": "x", "fill": 0.0, "drop_missing": false,
                      "shift": 0.0, "scale": 1.0}],
        "target": {"type": "classes", "name": "y", "classes": ["no", "yes"]},
        "id_column": null,
        "task": "classification",
    }))
    .unwrap();
    let spec = serde_json::from_value(json!({
        "kind": "mlp", "input": {"type": "flat", "width": 1}, "embeddings": [], "outputs": 2,
        "hidden": [], "activation": "relu", "dropout": 0.0, "batch_norm": false, "conv": [],
    }))
    .unwrap();
    let forward: Forward = Box::new(|batch: &kiln_data::Encoded| {
        if batch.x.contains(&13.0) {
            panic!("unlucky row");
        }
        batch
            .x
            .iter()
            .flat_map(|&v| {
                if v == 7.0 {
                    [f32::INFINITY, f32::NEG_INFINITY]
                } else {
                    [v, -v]
                }
            })
            .collect()
    });
    let settings = BatchSettings {
        enabled: false,
        ..BatchSettings::default()
    };
    ServedModel {
        name: "m".into(),
        run_dir: "unused".into(),
        body: Body::Network {
            preprocessor,
            ignored_columns: Vec::new(),
            spec,
            batcher: Batcher::spawn_with("m", forward, 2, settings, metrics),
        },
    }
}

fn state() -> AppState {
    let metrics = Arc::new(Metrics::new());
    AppState::from_models(
        vec![model(metrics.clone())],
        ServeConfig::default(),
        metrics,
    )
}

async fn call(app: &Router, method: &str, uri: &str, body: &str) -> (StatusCode, String) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(HttpBody::from(body.to_string()))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn a_panicking_batch_is_a_500_and_the_model_stays_ready() {
    let app = router(Arc::new(state()));
    let predict = |x: f64| json!({"instances": [{"x": x}]}).to_string();
    let (status, body) = call(&app, "POST", "/v1/models/m/predict", &predict(13.0)).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(body.contains("panicked: unlucky row"), "{body}");
    let (status, body) = call(&app, "POST", "/v1/models/m/predict", &predict(1.0)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        call(&app, "GET", "/v2/health/ready", "").await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(&app, "GET", "/v2/models/m/ready", "").await.0,
        StatusCode::OK
    );
    let (_, metrics) = call(&app, "GET", "/metrics", "").await;
    assert!(
        metrics.contains("kiln_batch_panics_total{model=\"m\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_stopped_worker_makes_readiness_false() {
    let mut state = state();
    let Some(ServedModel {
        body: Body::Network { batcher, .. },
        ..
    }) = state.models.get_mut("m")
    else {
        unreachable!()
    };
    batcher.disconnect();
    let state = Arc::new(state);
    let deadline = Instant::now() + Duration::from_secs(5);
    while state.models["m"].is_ready() {
        assert!(Instant::now() < deadline, "the worker did not stop");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let app = router(state);
    let (status, body) = call(&app, "GET", "/v2/health/ready", "").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body.contains("\"ready\":false") && body.contains("m"),
        "{body}"
    );
    let (status, body) = call(&app, "GET", "/v2/models/m/ready", "").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (_, body) = call(&app, "POST", "/v2/repository/index", "").await;
    assert!(body.contains("UNAVAILABLE"), "{body}");
    let (status, body) = call(
        &app,
        "POST",
        "/v1/models/m/predict",
        r#"{"instances": [{"x": 1}]}"#,
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    let (_, metrics) = call(&app, "GET", "/metrics", "").await;
    assert!(
        metrics.contains("kiln_model_ready{model=\"m\"} 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_output_that_overflows_is_a_400_naming_the_row_never_a_nan() {
    let app = router(Arc::new(state()));
    let v1 = json!({"instances": [{"x": 1}, {"x": 7}]}).to_string();
    let (status, body) = call(&app, "POST", "/v1/models/m/predict", &v1).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body.contains("instance 1: the model's output is inf") && body.contains("\\\"x\\\""),
        "{body}"
    );
    let v2 = json!({"inputs": [{"name": "features", "datatype": "FP32", "shape": [2, 1], "data": [7.0, 1.0]}]});
    let (status, body) = call(&app, "POST", "/v2/models/m/infer", &v2.to_string()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("row 0: the model's output is inf"), "{body}");
    // The other rows of the model still answer.
    let (status, body) = call(
        &app,
        "POST",
        "/v1/models/m/predict",
        r#"{"instances": [{"x": 1}]}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn bodies_being_read_share_one_memory_budget() {
    let budget = Arc::new(Semaphore::new(2)); // 2 KiB
    let body = |n: usize| HttpBody::from(vec![b'x'; n]);
    let (bytes, held) = collect_body(body(1500), 1 << 20, &budget)
        .await
        .ok()
        .unwrap();
    assert_eq!(bytes.len(), 1500);
    assert_eq!(budget.available_permits(), 0, "1500 bytes hold 2 KiB");
    assert!(matches!(
        collect_body(body(10), 1 << 20, &budget).await,
        Err(BodyError::NoMemory)
    ));
    drop(held);
    assert_eq!(
        budget.available_permits(),
        2,
        "a finished request gives its share back"
    );
    assert!(matches!(
        collect_body(body(3000), 1 << 20, &budget).await,
        Err(BodyError::NoMemory)
    ));
    assert_eq!(
        budget.available_permits(),
        2,
        "a refused body gives back what it took"
    );
    assert!(matches!(
        collect_body(body(3000), 2048, &budget).await,
        Err(BodyError::TooLarge)
    ));
}
