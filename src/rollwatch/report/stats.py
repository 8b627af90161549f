"""The report's statistics: pure functions of counts, and why these ones.

* ``pass_at_1`` is the pooled share of scored rollouts that passed, with the Wilson
  score interval at 95%. Wilson rather than the normal ("Wald") interval because the
  rates that matter here are small: at 1 pass in 300 rollouts Wald's interval goes
  below zero and at 0 in 300 it collapses to a point, while Wilson's stays inside
  [0, 1] and keeps close to its nominal coverage (Brown, Cai & DasGupta 2001).
* ``pass_at_k`` is the unbiased estimator of Chen et al. (2021), "Evaluating Large
  Language Models Trained on Code": per problem with ``n`` samples of which ``c``
  passed, ``1 - C(n-c, k) / C(n, k)``, the chance that ``k`` samples drawn without
  replacement hold a pass; averaged over the problems that have ``n >= k`` samples
  (``pass_at_10_problems`` and so on say how many). Null when no problem has ``k``
  samples: a smaller sample cannot say anything about ``k`` tries.
* Expected rollouts to a first solution is ``1/p`` (the mean of a geometric
  distribution, counting the solving rollout), its range ``1/high .. 1/low`` from
  the Wilson bounds; dollars are that times the mean cost of a scored rollout. With
  no pass in ``n`` rollouts there is no estimate, only a bound: the expected number
  is at least ``1/high`` and unbounded above; the row says so in ``note``.
* Changes between two runs, and before and after a release, are judged with
  Fisher's exact test (two-sided), not the two-proportion z-test: the z-test's normal
  approximation fails exactly where we look, at a handful of passes or none.

Only the standard library: the math is small, and pulling SciPy into a service for
four formulas is not worth its weight.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from statistics import NormalDist

#: The two-sided 95% normal quantile (1.959963...).
Z95 = NormalDist().inv_cdf(0.975)
#: The k of the pass@k columns.
KS = (1, 10, 100)
#: A change is flagged when its p-value is below this.
ALPHA = 0.05


# --- the estimators (pure) -------------------------------------------------------------


def wilson(passed: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval for ``passed`` successes in ``n`` trials; None when n = 0."""
    if n <= 0:
        return None
    if not 0 <= passed <= n:
        raise ValueError(f"passed must be within 0..{n}, not {passed}")
    p = passed / n
    z2 = z * z
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # At the edges the bound is exactly 0 or 1; floating point would leave 1e-17.
    low = 0.0 if passed == 0 else max(0.0, center - half)
    high = 1.0 if passed == n else min(1.0, center + half)
    return low, high


def pass_at_k(n: int, c: int, k: int) -> float | None:
    """Chen et al.'s unbiased pass@k from ``n`` samples with ``c`` passes; None when n < k.

    ``1 - C(n-c, k)/C(n, k)`` computed as a product of ``min(c, k)`` factors, each in
    (0, 1]: ``prod_{i=n-c+1}^{n} (1 - k/i)`` or, the same ratio,
    ``prod_{j=0}^{k-1} (n-c-j)/(n-j)``. The binomials overflow a float long before the
    product loses precision, and a report stays as quick whatever the number of samples
    (a year of weekly runs puts thousands on one problem).
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    if not 0 <= c <= n:
        raise ValueError(f"c must be within 0..{n}, not {c}")
    if n < k:
        return None
    if n - c < k:
        return 1.0
    prod = 1.0
    if c <= k:
        for i in range(n - c + 1, n + 1):
            prod *= 1.0 - k / i
    else:
        for j in range(k):
            prod *= (n - c - j) / (n - j)
    return 1.0 - prod


def mean_pass_at_k(counts: Iterable[tuple[int, int]], k: int) -> tuple[float | None, int]:
    """pass@k averaged over the problems (``(n, c)`` each) with ``n >= k``, and their number."""
    values = [v for n, c in counts if (v := pass_at_k(n, c, k)) is not None]
    if not values:
        return None, 0
    return math.fsum(values) / len(values), len(values)


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def fisher_exact(a: int, n1: int, b: int, n2: int) -> float:
    """Two-sided p-value of Fisher's exact test: ``a`` passes in ``n1`` against ``b`` in ``n2``.

    The p-value sums the hypergeometric probabilities of every table with the same
    margins that is no more likely than the observed one (as R and SciPy do, with the
    same small relative tolerance so that ties in exact arithmetic stay ties).
    """
    if not (0 <= a <= n1 and 0 <= b <= n2):
        raise ValueError(f"need 0 <= a <= n1 and 0 <= b <= n2, got {a}/{n1} and {b}/{n2}")
    total, passes = n1 + n2, a + b
    if n1 == 0 or n2 == 0 or passes in (0, total):
        return 1.0
    base = _log_comb(total, n1)

    def log_p(x: int) -> float:
        return _log_comb(passes, x) + _log_comb(total - passes, n1 - x) - base

    observed = log_p(a)
    limit = observed + math.log1p(1e-7)
    lo, hi = max(0, passes - n2), min(passes, n1)
    p = math.fsum(math.exp(lp) for x in range(lo, hi + 1) if (lp := log_p(x)) <= limit)
    return min(1.0, p)


@dataclass(frozen=True, kw_only=True)
class Expectation:
    """Rollouts and dollars to a first solution, from a pass rate, with the Wilson range.

    ``rollouts`` is None when nothing passed (there is only a lower bound then), and
    ``rollouts_high`` is None when the Wilson low bound is 0 (no upper bound).
    """

    rollouts: float | None = None
    rollouts_low: float | None = None
    rollouts_high: float | None = None
    usd: float | None = None
    usd_low: float | None = None
    usd_high: float | None = None
    note: str = ""


def _inv(x: float) -> float | None:
    return 1.0 / x if x > 0 else None


def _times(a: float | None, b: float | None) -> float | None:
    return a * b if a is not None and b is not None else None


def expected_to_solve(passed: int, n: int, cost_per_rollout: float | None) -> Expectation:
    """Expected rollouts (``1/p``) and dollars (``cost/p``) until a first pass, with their range."""
    ci = wilson(passed, n)
    if ci is None:
        return Expectation(note="no scored rollouts")
    low, high = ci
    point = n / passed if passed else None
    r_low, r_high = _inv(high), _inv(low)
    note = ""
    if passed == 0:
        # Honest about what zero passes says: not "impossible", not "1/p = inf", but
        # that n were not enough and the mean per solve is at least 1/high.
        note = (
            f"no solve in {n} rollouts: {n} were not enough; "
            f"at 95% the expected number per solve is at least {r_low:,.0f}"
        )
    return Expectation(
        rollouts=point,
        rollouts_low=r_low,
        rollouts_high=r_high,
        usd=_times(point, cost_per_rollout),
        usd_low=_times(r_low, cost_per_rollout),
        usd_high=_times(r_high, cost_per_rollout),
        note=note,
    )


def _ratio(num: float | None, den: int) -> float | None:
    return num / den if num is not None and den > 0 else None
