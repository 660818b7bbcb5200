//! The pre-optimized form: tract's NNEF dialect (NNEF plus tract's core and
//! ONNX extensions), stored in the package as `model.nnef.tar`.
//!
//! Design: the stored graph is the *decluttered* typed model, after our ONNX
//! rewrites and the choice of execution strategy. Loading it skips protobuf
//! decoding, ONNX translation, type inference and decluttering; only the
//! device-specific codegen (`into_optimized`) remains, which must run on the
//! device anyway because it picks kernels for the CPU at hand.

use tract_onnx::WithOnnx;
use tract_onnx::prelude::{Framework, TypedModel};

use crate::engine::cpu::guarded;
use crate::error::Result;

/// The tract release whose NNEF dialect we write; a package written by
/// another release is read from its ONNX member instead.
pub const TRACT_VERSION: &str = "0.23.9";

fn framework() -> tract_nnef::framework::Nnef {
    tract_nnef::nnef().with_onnx()
}

pub(crate) fn write(model: &TypedModel) -> Result<Vec<u8>> {
    guarded("writing NNEF", || {
        framework().write_to_tar(model, Vec::new())
    })
}

pub(crate) fn read(bytes: &[u8]) -> Result<TypedModel> {
    guarded("reading NNEF", || framework().model_for_read(&mut &*bytes))
}
