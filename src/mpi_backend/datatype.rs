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

/// Where a buffer starts, as MPI takes it. An empty slice's address is
/// dangling, and a dangling `u8` address is 1: Open MPI's `MPI_IN_PLACE`,
/// which turns a root's empty receive into an error (or worse, an empty
/// send into "in place"). Empty buffers point at a real, unused word.
pub(super) fn address<T>(buffer: &[T]) -> *const std::ffi::c_void {
    if buffer.is_empty() {
        return std::ptr::addr_of!(NOWHERE[0]).cast();
    }
    buffer.as_ptr().cast()
}

/// [`address`] of a buffer MPI writes to.
pub(super) fn address_mut<T>(buffer: &mut [T]) -> *mut std::ffi::c_void {
    if buffer.is_empty() {
        // MPI writes nothing to a buffer of zero elements. A word apart
        // from the empty send buffers', so that the two never alias.
        return std::ptr::addr_of!(NOWHERE[1]).cast_mut().cast();
    }
    buffer.as_mut_ptr().cast()
}

/// The words empty buffers point at: one for sends, one for receives.
static NOWHERE: [u64; 2] = [0; 2];
