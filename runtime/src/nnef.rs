//! The pre-optimized form: tract's NNEF dialect (NNEF plus tract's core and
//! ONNX extensions, plus ours below), stored in the package as
//! `model.nnef.tar`.
//!
//! Design: the stored graph is the *decluttered* typed model, after our ONNX
//! rewrites and the choice of execution strategy. Loading it skips protobuf
//! decoding, ONNX translation, type inference and decluttering; only the
//! device-specific codegen (`into_optimized`) remains, which must run on the
//! device anyway because it picks kernels for the CPU at hand.
//!
//! tract 0.23.9 has no NNEF serializer for the quantize/dequantize operators
//! its ONNX front end produces (`QuantizeLinearU8`, `QuantizeLinearI8`,
//! `DequantizeLinearF32`) nor for the `LookupTable` its optimizer makes of
//! quantized element-wise chains, so quantized models could not be
//! pre-optimized. The `outpost` registry below serializes them; no crate
//! provides them, and each is a few lines over tract's own registry API.
//! Still missing: onnx's `DynamicQuantizeLinearU8` (its type is private to
//! tract-onnx), so dynamically quantized models load from ONNX.

use std::any::TypeId;

use tract_nnef::internal::*;
use tract_nnef::ser::{IntoAst, invocation, numeric};
use tract_onnx::WithOnnx;
use tract_onnx::prelude::{Framework, TypedModel};
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::quant::{
    DequantizeLinearF32, LookupTable, QuantizeLinearI8, QuantizeLinearU8, lookup_table,
    quantize_linear_i8, quantize_linear_u8,
};
use tract_onnx::tract_core::tract_linalg::routines::lut_u8;

use crate::engine::cpu::guarded;
use crate::error::Result;

/// The tract release whose NNEF dialect we write; a package written by
/// another release is read from its ONNX member instead.
pub const TRACT_VERSION: &str = "0.23.9";

/// Built once per process: constructing the framework parses NNEF's
/// standard library (~10 ms measured), more than loading a small model.
fn framework() -> &'static tract_nnef::framework::Nnef {
    static FRAMEWORK: std::sync::OnceLock<tract_nnef::framework::Nnef> = std::sync::OnceLock::new();
    FRAMEWORK.get_or_init(|| {
        let mut nnef = tract_nnef::nnef().with_onnx();
        nnef.registries.push(outpost_registry());
        nnef
    })
}

pub(crate) fn write(model: &TypedModel) -> Result<Vec<u8>> {
    guarded("writing NNEF", || {
        framework().write_to_tar(model, Vec::new())
    })
}

pub(crate) fn read(bytes: &[u8]) -> Result<TypedModel> {
    guarded("reading NNEF", || framework().model_for_read(&mut &*bytes))
}

fn quant_params() -> Vec<Parameter> {
    vec![
        TypeName::Scalar.tensor().named("input"),
        TypeName::Scalar.named("scale"),
        TypeName::Integer.named("zero_point"),
    ]
}

/// Registers an element-wise quantize op `$op` (built by `$ctor(scale,
/// zero_point: $zp)`) under the NNEF name `$id`.
macro_rules! register_quantize {
    ($r:expr, $id:literal, $op:ty, $ctor:path, $zp:ty) => {
        $r.register_element_wise(
            $id,
            TypeId::of::<$op>(),
            Box::new(|ast: &mut IntoAst<'_>, node: &TypedNode| {
                let Some(op) = node
                    .op_as::<ElementWiseOp>()
                    .and_then(|e| e.0.downcast_ref::<$op>())
                else {
                    return Ok(None);
                };
                let input = ast.mapping[&node.inputs[0]].clone();
                let args = [
                    ("scale", numeric(op.scale)),
                    ("zero_point", numeric(op.zero_point)),
                ];
                Ok(Some(invocation($id, &[input], &args)))
            }),
            quant_params(),
            |builder, invocation| {
                let input = invocation.named_arg_as(builder, "input")?;
                let scale: f32 = invocation.named_arg_as(builder, "scale")?;
                let zero_point: i64 = invocation.named_arg_as(builder, "zero_point")?;
                let zero_point = <$zp>::try_from(zero_point).map_err(|_| {
                    format_err!(
                        "zero point {zero_point} out of range for {}",
                        stringify!($zp)
                    )
                })?;
                builder.wire($ctor(scale, zero_point), &[input])
            },
        )
    };
}

fn outpost_registry() -> Registry {
    let mut r = Registry::new("outpost").with_doc(
        "Extension `outpost`: tract's ONNX quantize/dequantize operators (outpost-runtime).",
    );
    register_quantize!(
        r,
        "outpost_quantize_linear_u8",
        QuantizeLinearU8,
        quantize_linear_u8,
        u8
    );
    register_quantize!(
        r,
        "outpost_quantize_linear_i8",
        QuantizeLinearI8,
        quantize_linear_i8,
        i8
    );
    r.register_dumper(
        |ast: &mut IntoAst<'_>, node: &TypedNode, op: &DequantizeLinearF32| {
            let input = ast.mapping[&node.inputs[0]].clone();
            let args = [
                ("scale", numeric(op.scale)),
                ("zero_point", numeric(op.zero_point)),
            ];
            Ok(Some(invocation(
                "outpost_dequantize_linear_f32",
                &[input],
                &args,
            )))
        },
    );
    r.register_primitive(
        "outpost_dequantize_linear_f32",
        &quant_params(),
        &[("output", TypeName::Scalar.tensor())],
        |builder, invocation| {
            let input = invocation.named_arg_as(builder, "input")?;
            let scale: f32 = invocation.named_arg_as(builder, "scale")?;
            let zero_point: i64 = invocation.named_arg_as(builder, "zero_point")?;
            let zero_point = i32::try_from(zero_point)
                .map_err(|_| format_err!("zero point {zero_point} is not an i32"))?;
            builder.wire(DequantizeLinearF32 { scale, zero_point }, &[input])
        },
    );
    r.register_element_wise(
        "outpost_lookup_table",
        TypeId::of::<LookupTable>(),
        Box::new(|ast: &mut IntoAst<'_>, node: &TypedNode| {
            let Some(op) = node
                .op_as::<ElementWiseOp>()
                .and_then(|e| e.0.downcast_ref::<LookupTable>())
            else {
                return Ok(None);
            };
            let input = ast.mapping[&node.inputs[0]].clone();
            let table = ast.konst_variable(
                format!("{}.table", node.name),
                &Arc::new(tensor1(op.table.table())),
            )?;
            Ok(Some(invocation(
                "outpost_lookup_table",
                &[input],
                &[("table", table.as_ref().clone())],
            )))
        }),
        vec![
            TypeName::Scalar.tensor().named("input"),
            TypeName::Integer.tensor().named("table"),
        ],
        |builder, invocation| {
            let input = invocation.named_arg_as(builder, "input")?;
            let table: Arc<Tensor> = invocation.named_arg_as(builder, "table")?;
            let table = table.cast_to::<u8>()?;
            let bytes = table.to_plain_array_view::<u8>()?;
            let bytes = bytes
                .as_slice()
                .ok_or_else(|| format_err!("lookup table is not contiguous"))?;
            if bytes.len() != 256 {
                bail!("lookup table has {} entries, expected 256", bytes.len());
            }
            builder.wire(lookup_table(lut_u8(bytes)?), &[input])
        },
    );
    r
}
