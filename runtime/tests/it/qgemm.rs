//! `com.microsoft::QGemm` (onnxruntime's contrib operator), which tract
//! cannot load, against integer arithmetic done by hand: per-tensor and
//! per-channel weights, transposed or not, quantized or float output, alpha.

use outpost_runtime::{LoadOptions, Model, Tensor};
use tract_onnx::pb;

use crate::common::onnx::{model, value_info};

fn t(name: &str, dt: i32, dims: &[i64], raw: Vec<u8>) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        data_type: dt,
        dims: dims.to_vec(),
        raw_data: raw,
        ..Default::default()
    }
}
fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
fn i32s(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

struct Case {
    trans_b: bool,
    b_scale: Vec<f32>,
    b_zp: Vec<i8>,
    alpha: f32,
    quantized_out: bool,
}

const M: usize = 2;
const K: usize = 3;
const N: usize = 4;
const A: [u8; M * K] = [10, 200, 128, 0, 255, 77];
const A_SCALE: f32 = 0.02;
const A_ZP: u8 = 128;
/// B as [K, N].
const B: [i8; K * N] = [1, -2, 3, -4, 50, 60, -70, 80, -127, 0, 127, 9];
const C: [i32; N] = [100, -50, 0, 7];
const Y_SCALE: f32 = 0.05;
const Y_ZP: u8 = 120;

fn build(case: &Case) -> Vec<u8> {
    let b_data: Vec<u8> = if case.trans_b {
        (0..N)
            .flat_map(|n| (0..K).map(move |k| B[k * N + n] as u8))
            .collect()
    } else {
        B.iter().map(|v| *v as u8).collect()
    };
    let b_dims: Vec<i64> = if case.trans_b {
        vec![N as i64, K as i64]
    } else {
        vec![K as i64, N as i64]
    };
    let per = |len: usize| if len == 1 { vec![] } else { vec![len as i64] };
    let mut inputs = vec!["A", "a_scale", "a_zp", "B", "b_scale", "b_zp", "C"];
    let mut inits = vec![
        t("a_scale", 1, &[], f32s(&[A_SCALE])),
        t("a_zp", 2, &[], vec![A_ZP]),
        t("B", 3, &b_dims, b_data),
        t("b_scale", 1, &per(case.b_scale.len()), f32s(&case.b_scale)),
        t(
            "b_zp",
            3,
            &per(case.b_zp.len()),
            case.b_zp.iter().map(|v| *v as u8).collect(),
        ),
        t("C", 6, &[N as i64], i32s(&C)),
    ];
    if case.quantized_out {
        inputs.extend(["y_scale", "y_zp"]);
        inits.push(t("y_scale", 1, &[], f32s(&[Y_SCALE])));
        inits.push(t("y_zp", 2, &[], vec![Y_ZP]));
    }
    let node = pb::NodeProto {
        op_type: "QGemm".into(),
        domain: "com.microsoft".into(),
        name: "qgemm".into(),
        input: inputs.iter().map(|s| (*s).into()).collect(),
        output: vec!["Y".into()],
        attribute: vec![
            pb::AttributeProto {
                name: "transB".into(),
                r#type: 2,
                i: i64::from(case.trans_b),
                ..Default::default()
            },
            pb::AttributeProto {
                name: "alpha".into(),
                r#type: 1,
                f: case.alpha,
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let mut a = value_info("A", &[M as i64, K as i64]);
    if let Some(pb::type_proto::Value::TensorType(tt)) =
        a.r#type.as_mut().and_then(|t| t.value.as_mut())
    {
        tt.elem_type = 2; // uint8
    }
    let mut bytes = model(
        vec![node],
        inits,
        vec![a],
        vec![pb::ValueInfoProto {
            name: "Y".into(),
            ..Default::default()
        }],
    );
    // The contrib domain must be imported.
    use prost::Message;
    let mut m = pb::ModelProto::decode(&*bytes).unwrap();
    m.opset_import.push(pb::OperatorSetIdProto {
        domain: "com.microsoft".into(),
        version: 1,
    });
    bytes = m.encode_to_vec();
    bytes
}

/// Y = alpha · a_scale · b_scale[n] · (Σ_k (A−a_zp)(B−b_zp[n]) + C[n]),
/// then requantized with round-half-to-even when y_scale is given.
fn expected(case: &Case) -> Vec<f32> {
    let mut out = vec![];
    for m in 0..M {
        for n in 0..N {
            let bs = if case.b_scale.len() == 1 {
                case.b_scale[0]
            } else {
                case.b_scale[n]
            };
            let bz = if case.b_zp.len() == 1 {
                case.b_zp[0]
            } else {
                case.b_zp[n]
            };
            let acc: i32 = (0..K)
                .map(|k| {
                    (i32::from(A[m * K + k]) - i32::from(A_ZP))
                        * (i32::from(B[k * N + n]) - i32::from(bz))
                })
                .sum();
            let real = case.alpha * A_SCALE * bs * (acc + C[n]) as f32;
            out.push(if case.quantized_out {
                ((real / Y_SCALE).round_ties_even() + f32::from(Y_ZP)).clamp(0.0, 255.0)
            } else {
                real
            });
        }
    }
    out
}

fn check(case: Case) {
    let m = Model::from_onnx_bytes(&build(&case), "qgemm", None, &LoadOptions::default()).unwrap();
    assert_eq!(m.info().rewrites.qgemm, 1);
    let a = Tensor::from_shape(&[M, K], &A).unwrap();
    let y = m.run(vec![a]).unwrap().remove(0);
    let got: Vec<f32> = crate::common::f32s(&y);
    let want = expected(&case);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        // Quantized: exact up to one step where float rounding of the
        // rescale flips a tie; float: relative 1e-5.
        let tol = if case.quantized_out {
            1.0
        } else {
            1e-5 * w.abs().max(1.0)
        };
        assert!(
            (g - w).abs() <= tol,
            "element {i}: got {g}, expected {w} (all: {got:?} vs {want:?})"
        );
    }
}

#[test]
fn qgemm_per_tensor_quantized_output() {
    check(Case {
        trans_b: false,
        b_scale: vec![0.01],
        b_zp: vec![0],
        alpha: 1.0,
        quantized_out: true,
    });
}

#[test]
fn qgemm_per_channel_transposed_float_output_with_alpha() {
    check(Case {
        trans_b: true,
        b_scale: vec![0.01, 0.02, 0.005, 0.03],
        b_zp: vec![0, 1, -2, 3],
        alpha: 0.5,
        quantized_out: false,
    });
}

#[test]
fn qgemm_per_channel_not_transposed_quantized_output() {
    check(Case {
        trans_b: false,
        b_scale: vec![0.01, 0.02, 0.005, 0.03],
        b_zp: vec![0; 4],
        alpha: 1.0,
        quantized_out: true,
    });
}
