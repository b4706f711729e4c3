"""Phase 1 references: linear algebra, a scalar autograd engine, probability.

Each is what the Phase 1 notebooks build from scratch and check against.
"""
from course_lib.foundations.autograd import Value, gradient_descent, mlp2_forward_backward, numerical_gradient
from course_lib.foundations.linalg import (PCAResult, cosine_similarity, low_rank_approx, pca, pca_project,
                                           pca_reconstruct)
from course_lib.foundations.probability import (entropy_normal, exponential_icdf, gaussian_log_prob, inverse_cdf_sample,
                                                kl_monte_carlo, kl_normal, mvn_log_prob, reparameterize)

__all__ = ["Value", "numerical_gradient", "mlp2_forward_backward", "gradient_descent", "PCAResult", "pca",
           "pca_project", "pca_reconstruct", "low_rank_approx", "cosine_similarity", "gaussian_log_prob",
           "mvn_log_prob", "kl_normal", "kl_monte_carlo", "reparameterize", "exponential_icdf",
           "inverse_cdf_sample", "entropy_normal"]
