//! Element types and reduction operations.
//!
//! [`Element`] is implemented for `f32 f64 f16 bf16 i8 u8 i32 u32 i64 u64`.
//! Every reduction is a plain loop over two slices, monomorphised per type and
//! per operation (`combine` takes the operation as a closure that inlines), so
//! the compiler turns it into SIMD code. Checked with `objdump -d` on the
//! release `lumen` binary (default x86-64 target, SSE2): the `f32` sum and
//! min loops are `addps`/`minps` over 16 bytes, `f64` sum `addpd`, `u64` sum
//! `paddq`, unrolled by two. A build with `-C target-cpu=native` would use
//! AVX (not measured); at the sizes where reduction time matters the loop is
//! memory-bound anyway (the buffers stream from memory). Half-precision types convert blocks of 64
//! elements to `f32` (the `half` crate uses F16C where the CPU has it), reduce
//! in `f32` and round back once per element, which is what NCCL does too.
//!
//! Integer sums and products wrap (two's complement), as MPI implementations
//! do in practice. Floating-point `min`/`max` follow `a < b ? a : b`: with a
//! NaN operand the result is one of the operands, unspecified which.

use half::{bf16, f16};

/// A reduction operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    /// Sum (wrapping for integers).
    Sum,
    /// Product (wrapping for integers).
    Prod,
    /// Minimum.
    Min,
    /// Maximum.
    Max,
    /// Bitwise and (integers only).
    BitAnd,
    /// Bitwise or (integers only).
    BitOr,
    /// Bitwise exclusive or (integers only).
    BitXor,
}

impl ReduceOp {
    /// Every operation, for tests and benchmarks.
    pub const ALL: [ReduceOp; 7] = [
        ReduceOp::Sum,
        ReduceOp::Prod,
        ReduceOp::Min,
        ReduceOp::Max,
        ReduceOp::BitAnd,
        ReduceOp::BitOr,
        ReduceOp::BitXor,
    ];

    /// True for the bitwise operations, which only integers support.
    pub fn is_bitwise(self) -> bool {
        matches!(self, ReduceOp::BitAnd | ReduceOp::BitOr | ReduceOp::BitXor)
    }
}

impl std::fmt::Display for ReduceOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Prod => "prod",
            ReduceOp::Min => "min",
            ReduceOp::Max => "max",
            ReduceOp::BitAnd => "band",
            ReduceOp::BitOr => "bor",
            ReduceOp::BitXor => "bxor",
        };
        f.write_str(name)
    }
}

/// Which element type a buffer holds (for messages and errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElementKind {
    /// `f32`
    F32,
    /// `f64`
    F64,
    /// `half::f16`
    F16,
    /// `half::bf16`
    BF16,
    /// `i8`
    I8,
    /// `u8`
    U8,
    /// `i32`
    I32,
    /// `u32`
    U32,
    /// `i64`
    I64,
    /// `u64`
    U64,
}

impl ElementKind {
    /// True for the floating-point kinds.
    pub fn is_float(self) -> bool {
        matches!(
            self,
            ElementKind::F32 | ElementKind::F64 | ElementKind::F16 | ElementKind::BF16
        )
    }

    /// The Rust name of the type.
    pub fn name(self) -> &'static str {
        match self {
            ElementKind::F32 => "f32",
            ElementKind::F64 => "f64",
            ElementKind::F16 => "f16",
            ElementKind::BF16 => "bf16",
            ElementKind::I8 => "i8",
            ElementKind::U8 => "u8",
            ElementKind::I32 => "i32",
            ElementKind::U32 => "u32",
            ElementKind::I64 => "i64",
            ElementKind::U64 => "u64",
        }
    }

    /// Whether `op` is defined for this kind.
    pub fn supports(self, op: ReduceOp) -> bool {
        !(self.is_float() && op.is_bitwise())
    }
}

/// A type the collectives can move and reduce.
pub trait Element: bytemuck::Pod + Send + Sync + std::fmt::Debug + PartialEq + 'static {
    /// Which type this is.
    const KIND: ElementKind;

    /// `acc[i] = acc[i] op x[i]` for every `i` (the slices have equal length).
    /// The caller has checked `Self::KIND.supports(op)`; unsupported
    /// operations leave `acc` unchanged.
    fn reduce_slices(op: ReduceOp, acc: &mut [Self], x: &[Self]);
}

#[inline(always)]
fn combine<T: Copy>(acc: &mut [T], x: &[T], f: impl Fn(T, T) -> T) {
    let n = acc.len().min(x.len());
    let (acc, x) = (&mut acc[..n], &x[..n]);
    for (a, b) in acc.iter_mut().zip(x) {
        *a = f(*a, *b);
    }
}

macro_rules! integer_element {
    ($t:ty, $kind:ident) => {
        impl Element for $t {
            const KIND: ElementKind = ElementKind::$kind;

            fn reduce_slices(op: ReduceOp, acc: &mut [Self], x: &[Self]) {
                match op {
                    ReduceOp::Sum => combine(acc, x, |a, b| a.wrapping_add(b)),
                    ReduceOp::Prod => combine(acc, x, |a, b| a.wrapping_mul(b)),
                    ReduceOp::Min => combine(acc, x, |a, b| if b < a { b } else { a }),
                    ReduceOp::Max => combine(acc, x, |a, b| if b > a { b } else { a }),
                    ReduceOp::BitAnd => combine(acc, x, |a, b| a & b),
                    ReduceOp::BitOr => combine(acc, x, |a, b| a | b),
                    ReduceOp::BitXor => combine(acc, x, |a, b| a ^ b),
                }
            }
        }
    };
}

integer_element!(i8, I8);
integer_element!(u8, U8);
integer_element!(i32, I32);
integer_element!(u32, U32);
integer_element!(i64, I64);
integer_element!(u64, U64);

macro_rules! float_element {
    ($t:ty, $kind:ident) => {
        impl Element for $t {
            const KIND: ElementKind = ElementKind::$kind;

            fn reduce_slices(op: ReduceOp, acc: &mut [Self], x: &[Self]) {
                match op {
                    ReduceOp::Sum => combine(acc, x, |a, b| a + b),
                    ReduceOp::Prod => combine(acc, x, |a, b| a * b),
                    ReduceOp::Min => combine(acc, x, |a, b| if b < a { b } else { a }),
                    ReduceOp::Max => combine(acc, x, |a, b| if b > a { b } else { a }),
                    ReduceOp::BitAnd | ReduceOp::BitOr | ReduceOp::BitXor => {}
                }
            }
        }
    };
}

float_element!(f32, F32);
float_element!(f64, F64);

/// Elements converted to `f32` at a time for the half-precision kinds.
const HALF_BLOCK: usize = 64;

macro_rules! half_element {
    ($t:ty, $kind:ident) => {
        impl Element for $t {
            const KIND: ElementKind = ElementKind::$kind;

            fn reduce_slices(op: ReduceOp, acc: &mut [Self], x: &[Self]) {
                use half::slice::HalfFloatSliceExt;
                if op.is_bitwise() {
                    return;
                }
                let mut a32 = [0f32; HALF_BLOCK];
                let mut x32 = [0f32; HALF_BLOCK];
                for (a, b) in acc.chunks_mut(HALF_BLOCK).zip(x.chunks(HALF_BLOCK)) {
                    let n = a.len().min(b.len());
                    a[..n].convert_to_f32_slice(&mut a32[..n]);
                    b[..n].convert_to_f32_slice(&mut x32[..n]);
                    f32::reduce_slices(op, &mut a32[..n], &x32[..n]);
                    a[..n].convert_from_f32_slice(&a32[..n]);
                }
            }
        }
    };
}

half_element!(f16, F16);
half_element!(bf16, BF16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_ops_wrap_and_bitwise() {
        let mut a = vec![100i8, -5, 7, 0b0110];
        i8::reduce_slices(ReduceOp::Sum, &mut a, &[100, 5, -8, 0]);
        assert_eq!(a, vec![-56, 0, -1, 0b0110]);
        let mut b = vec![0b1100u8, 3, 200];
        u8::reduce_slices(ReduceOp::BitXor, &mut b, &[0b1010, 1, 100]);
        assert_eq!(b, vec![0b0110, 2, 172]);
        let mut c = vec![u64::MAX, 5];
        u64::reduce_slices(ReduceOp::Prod, &mut c, &[2, 3]);
        assert_eq!(c, vec![u64::MAX - 1, 15]);
        let mut d = vec![-3i32, 9];
        i32::reduce_slices(ReduceOp::Min, &mut d, &[4, -9]);
        assert_eq!(d, vec![-3, -9]);
        i32::reduce_slices(ReduceOp::Max, &mut d, &[4, -10]);
        assert_eq!(d, vec![4, -9]);
    }

    #[test]
    fn float_and_half_ops() {
        let mut a = vec![1.5f32, -2.0, 3.0];
        f32::reduce_slices(ReduceOp::Prod, &mut a, &[2.0, 2.0, -1.0]);
        assert_eq!(a, vec![3.0, -4.0, -3.0]);
        let mut h: Vec<f16> = (0..200).map(|i| f16::from_f32(i as f32)).collect();
        let x: Vec<f16> = (0..200).map(|_| f16::from_f32(0.5)).collect();
        f16::reduce_slices(ReduceOp::Sum, &mut h, &x);
        assert!(h
            .iter()
            .enumerate()
            .all(|(i, v)| v.to_f32() == i as f32 + 0.5));
        let mut b: Vec<bf16> = [1.0f32, -4.0].iter().map(|&v| bf16::from_f32(v)).collect();
        bf16::reduce_slices(
            ReduceOp::Max,
            &mut b,
            &[bf16::from_f32(2.0), bf16::from_f32(-8.0)],
        );
        assert_eq!(b, vec![bf16::from_f32(2.0), bf16::from_f32(-4.0)]);
        assert!(!ElementKind::BF16.supports(ReduceOp::BitOr));
        assert!(ElementKind::U8.supports(ReduceOp::BitOr));
    }
}
