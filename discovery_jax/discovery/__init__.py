"""Latent discovery: bank geometry, priors, the paper's claims, the guard, the criteria
and their targets, the discovery kernels and their driver, and the baselines."""

from discovery_jax.discovery.baselines import renoise_baseline, sample_gaussian_baseline
from discovery_jax.discovery.claims import gaussianity, separability
from discovery_jax.discovery.compare import compare_to_bank
from discovery_jax.discovery.criteria import (
    CRITERIA,
    REJECTION_REASONS,
    Targets,
    compute_targets,
    reference_indices,
    score_candidates,
    slerp,
)
from discovery_jax.discovery.driver import (
    RECORD_KEYS,
    DiscoveryOptions,
    DiscoveryResult,
    discover,
    path_draws,
    select_chunk,
)
from discovery_jax.discovery.guard import LinearGuard, fit_guard, guard_logits
from discovery_jax.discovery.linalg import as_rows, bank_mean, check_banks, gram, norms
from discovery_jax.discovery.prior import (
    GaussianPrior,
    fit_prior,
    fit_prior_published_head,
    gaussian_geometry,
    sample_prior,
    standard_normal,
)
from discovery_jax.discovery.typical import (
    TypicalOptions,
    TypicalResult,
    discover_typical,
    fit_criteria,
    resolve_step,
    step_filter,
    typical_candidates,
)
from discovery_jax.discovery.statistics import (
    angles_at_origin,
    angles_at_vertex,
    centre_distance,
    describe_bank,
    norm_vs_chi,
    pairwise_distances,
    random_triples,
)
