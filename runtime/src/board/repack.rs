//! Which weights llama.cpp's CPU backend repacks, by CPU.
//!
//! At load, ggml's CPU backend copies the matrices it has interleaved kernels for into its own
//! buffer (`CPU_REPACK` in llama.cpp's log), laid out for the CPU's SIMD units
//! (`ggml-cpu/repack.cpp`, `ggml_repack_get_optimal_repack_type`). The model file is mapped;
//! reading a matrix to repack it makes its file pages resident, and llama.cpp unmaps only the
//! ends of the mapping, so those pages stay in the process's RSS after loading: clean page
//! cache the kernel can reclaim (nothing reads them again), but counted in `VmHWM` and charged
//! to the cgroup. Measured on the `1b` preset on x86-64 (AVX2): 445.5 MiB repacked, and the
//! peak RSS was that much above the weights.
//!
//! The rules mirror that function for the types this estimate sees; the matrix's row count
//! (`ne[1]`) must be a multiple of the interleave. The token embeddings are never repacked
//! (they are read by row lookups, which the repacked buffer does not serve).

use serde::Serialize;

/// The CPU class that decides repacking.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CpuKind {
    /// x86-64 with AVX2.
    X86Avx2,
    /// x86-64 with AVX-512 (adds q2_K).
    X86Avx512,
    /// Arm with NEON and the dot-product extension, no int8 matrix multiply: Cortex-A76
    /// (Raspberry Pi 5), Cortex-A78AE (Jetson Orin).
    ArmDotprod,
    /// Arm with int8 matrix multiply (i8mm).
    ArmI8mm,
    /// Nothing is repacked.
    Other,
}

impl CpuKind {
    /// The class of the CPU this build of llama.cpp runs on (its compiled-in and detected
    /// features, as ggml reports them).
    pub fn this_machine() -> Self {
        // ggml's CPU features are ready once the backend is initialised.
        let _ = crate::engine::backend();
        // SAFETY: these ggml functions only read feature flags set at initialisation.
        let has = |f: unsafe extern "C" fn() -> std::os::raw::c_int| unsafe { f() } != 0;
        use llama_cpp_sys_2 as sys;
        if has(sys::ggml_cpu_has_avx512) {
            CpuKind::X86Avx512
        } else if has(sys::ggml_cpu_has_avx2) {
            CpuKind::X86Avx2
        } else if has(sys::ggml_cpu_has_neon) && has(sys::ggml_cpu_has_matmul_int8) {
            CpuKind::ArmI8mm
        } else if has(sys::ggml_cpu_has_neon) && has(sys::ggml_cpu_has_dotprod) {
            CpuKind::ArmDotprod
        } else {
            CpuKind::Other
        }
    }

    /// Whether a matrix of ggml type `type_id` with `rows` rows (`ne[1]`) is repacked.
    pub fn repacks(self, type_id: u32, rows: u64) -> bool {
        use CpuKind::*;
        let x86 = matches!(self, X86Avx2 | X86Avx512);
        let arm = matches!(self, ArmDotprod | ArmI8mm);
        let interleave = match type_id {
            // q4_0: 8 rows on x86, 4 on Arm.
            2 if x86 => 8,
            2 if arm => 4,
            // q4_K: 8 rows on both.
            12 if x86 || arm => 8,
            // q2_K: AVX-512 only.
            10 if self == X86Avx512 => 8,
            // q5_K, q6_K: Arm only.
            13 | 14 if arm => 8,
            // iq4_nl, mxfp4: 8 rows on x86, 4 on Arm.
            20 | 39 if x86 => 8,
            20 | 39 if arm => 4,
            // q8_0: Arm only.
            8 if arm => 4,
            _ => return false,
        };
        rows % interleave == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_follow_ggml() {
        // A Q4_K_M file: q4_K repacked everywhere, q6_K and q8_0 only on Arm.
        assert!(CpuKind::X86Avx2.repacks(12, 2048));
        assert!(!CpuKind::X86Avx2.repacks(14, 2048));
        assert!(CpuKind::ArmDotprod.repacks(14, 2048));
        assert!(CpuKind::ArmDotprod.repacks(8, 2048));
        assert!(!CpuKind::X86Avx512.repacks(8, 2048));
        assert!(CpuKind::X86Avx512.repacks(10, 2048) && !CpuKind::X86Avx2.repacks(10, 2048));
        // Row counts must divide by the interleave.
        assert!(!CpuKind::X86Avx2.repacks(2, 12) && CpuKind::ArmDotprod.repacks(2, 12));
        // Nothing on other CPUs, and never f16 or q4_1.
        assert!(!CpuKind::Other.repacks(12, 2048));
        assert!(!CpuKind::ArmI8mm.repacks(1, 2048) && !CpuKind::ArmI8mm.repacks(3, 2048));
    }
}
