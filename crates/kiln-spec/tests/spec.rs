//! `model.json` shapes: their JSON form (a promise to every saved run) and what `validate`
//! refuses in a damaged or hand-edited file.

use kiln_spec::{GptConfig, InputShape, ModelSpec, SpecError};
use serde_json::json;

fn mlp() -> serde_json::Value {
    json!({
        "kind": "mlp", "input": {"type": "flat", "width": 3}, "embeddings": [[5, 2]],
        "outputs": 2, "hidden": [8], "activation": "relu", "dropout": 0.1,
        "batch_norm": false, "conv": [],
    })
}

#[test]
fn saved_shapes_keep_their_json_form() {
    let spec: ModelSpec = serde_json::from_value(mlp()).unwrap();
    assert_eq!(spec.input, InputShape::Flat { width: 3 });
    assert_eq!(spec.head_input(), 3 + 2);
    spec.validate().unwrap();
    assert_eq!(
        serde_json::to_value(InputShape::Image {
            channels: 1,
            height: 28,
            width: 28
        })
        .unwrap(),
        json!({"type": "image", "channels": 1, "height": 28, "width": 28})
    );
}

#[test]
fn validate_names_the_field_of_a_damaged_spec() {
    for (field, value, needle) in [
        ("outputs", json!(0), "outputs"),
        ("hidden", json!([8, 0]), "hidden[1]"),
        ("hidden", json!([1u64 << 30]), "hidden[0]"),
        ("dropout", json!(1.5), "dropout"),
        ("embeddings", json!([[0, 2]]), "embeddings[0]"),
        ("kind", json!("cnn"), "kind"),
        ("hidden", json!(vec![4; 2000]), "hidden"),
    ] {
        let mut v = mlp();
        v[field] = value.clone();
        let spec: ModelSpec = serde_json::from_value(v).unwrap();
        let err = spec.validate().unwrap_err();
        assert!(
            matches!(err, SpecError::Invalid { .. }),
            "{field} = {value}: {err}"
        );
        assert!(err.to_string().contains(needle), "{field} = {value}: {err}");
    }
}

#[test]
fn gpt_shapes_are_checked() {
    let gpt = GptConfig {
        vocab_size: 100,
        context: 32,
        layers: 2,
        heads: 3,
        embd: 32,
        dropout: 0.0,
        bias: true,
        tied_head: true,
    };
    assert!(
        gpt.validate()
            .unwrap_err()
            .to_string()
            .contains("divisible")
    );
    let deep = GptConfig {
        heads: 4,
        layers: 5000,
        ..gpt.clone()
    };
    assert!(deep.validate().unwrap_err().to_string().contains("layers"));
    GptConfig { heads: 4, ..gpt }.validate().unwrap();
}
