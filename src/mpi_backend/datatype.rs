//! spmd's element types and built-in operators as MPI datatypes and
//! operators, so that MPI's own reductions do the combining.

use mpi::ffi;

use crate::op::Builtin;

/// The MPI datatype of the plain-number type with element code `code`
/// (see `crate::element`), if MPI has one.
pub(super) fn of_element(code: u16) -> Option<ffi::MPI_Datatype> {
    let usize_bits = usize::BITS;
    // SAFETY: reading MPI's predefined handles, valid after MPI_Init.
    unsafe {
        Some(match code {
            1 => ffi::RSMPI_UINT8_T,
            2 => ffi::RSMPI_INT8_T,
            3 => ffi::RSMPI_UINT16_T,
            4 => ffi::RSMPI_INT16_T,
            5 => ffi::RSMPI_UINT32_T,
            6 => ffi::RSMPI_INT32_T,
            7 => ffi::RSMPI_UINT64_T,
            8 => ffi::RSMPI_INT64_T,
            9 => ffi::RSMPI_FLOAT,
            10 => ffi::RSMPI_DOUBLE,
            13 if usize_bits == 64 => ffi::RSMPI_UINT64_T,
            14 if usize_bits == 64 => ffi::RSMPI_INT64_T,
            _ => return None,
        })
    }
}

/// Bytes, for everything that travels unreduced.
pub(super) fn bytes() -> ffi::MPI_Datatype {
    // SAFETY: a predefined handle.
    unsafe { ffi::RSMPI_UINT8_T }
}

/// The MPI operator that combines elements of code `code` as `op` does,
/// if there is one (MPI's logical and bitwise operators take integers
/// only).
pub(super) fn operator(op: Builtin, code: u16) -> Option<ffi::MPI_Op> {
    let integer = matches!(code, 1..=8 | 13 | 14);
    // SAFETY: reading MPI's predefined handles, valid after MPI_Init.
    unsafe {
        Some(match op {
            Builtin::Sum => ffi::RSMPI_SUM,
            Builtin::Product => ffi::RSMPI_PROD,
            Builtin::Min => ffi::RSMPI_MIN,
            Builtin::Max => ffi::RSMPI_MAX,
            Builtin::LogicalAnd if integer => ffi::RSMPI_LAND,
            Builtin::LogicalOr if integer => ffi::RSMPI_LOR,
            Builtin::LogicalXor if integer => ffi::RSMPI_LXOR,
            Builtin::BitAnd if integer => ffi::RSMPI_BAND,
            Builtin::BitOr if integer => ffi::RSMPI_BOR,
            Builtin::BitXor if integer => ffi::RSMPI_BXOR,
            _ => return None,
        })
    }
}
