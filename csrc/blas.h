// The few BLAS/LAPACK entry points the kernels use, from scipy-openblas64 (ILP64 integers,
// symbols prefixed scipy_ and suffixed 64_ so they never clash with torch's own BLAS).
#pragma once
#include <cstdint>

namespace ce::blas {
enum Order { RowMajor = 101, ColMajor = 102 };
enum Trans { NoTrans = 111, Transposed = 112 };
enum Uplo { Upper = 121, Lower = 122 };
enum Diag { NonUnit = 131 };
enum Side { Left = 141, Right = 142 };
}  // namespace ce::blas

extern "C" {
void scipy_cblas_dsyrk64_(int order, int uplo, int trans, int64_t n, int64_t k, double alpha,
                          const double* a, int64_t lda, double beta, double* c, int64_t ldc);
void scipy_cblas_ssyrk64_(int order, int uplo, int trans, int64_t n, int64_t k, float alpha,
                          const float* a, int64_t lda, float beta, float* c, int64_t ldc);
void scipy_cblas_sgemm64_(int order, int transa, int transb, int64_t m, int64_t n, int64_t k,
                          float alpha, const float* a, int64_t lda, const float* b, int64_t ldb,
                          float beta, float* c, int64_t ldc);
void scipy_cblas_dgemm64_(int order, int transa, int transb, int64_t m, int64_t n, int64_t k,
                          double alpha, const double* a, int64_t lda, const double* b, int64_t ldb,
                          double beta, double* c, int64_t ldc);
void scipy_cblas_dtrsm64_(int order, int side, int uplo, int transa, int diag, int64_t m,
                          int64_t n, double alpha, const double* a, int64_t lda, double* b,
                          int64_t ldb);
int64_t scipy_LAPACKE_dpotrf_work64_(int matrix_layout, char uplo, int64_t n, double* a,
                                     int64_t lda);
int64_t scipy_LAPACKE_dpotrs_work64_(int matrix_layout, char uplo, int64_t n, int64_t nrhs,
                                     const double* a, int64_t lda, double* b, int64_t ldb);
void scipy_openblas_set_num_threads64_(int n);
int scipy_openblas_get_num_threads64_(void);
}
