"""Statistics for sweep reports: Student t intervals, paired and Welch t-tests, and seeds for power.

Pure Python (no scipy): the Student t distribution function comes from the regularized
incomplete beta function (a continued fraction, accurate to ~1e-14), its quantile from
bisection on it, and the normal quantile from :class:`statistics.NormalDist`.

- :func:`summarize`: mean, sample std, n and the 95% t interval ``mean ± t_{0.975,n-1} s/√n``.
- :func:`compare`: ``b - a`` (a point against its baseline) with a paired t-test when the two
  have the same seeds, Welch's t-test (Welch–Satterthwaite df) otherwise; two-sided p, the
  matching 95% interval of the difference, and the seeds per arm that would detect the observed
  difference at 80% power (two-sided alpha 0.05, normal approximation):
  ``2 ((z_{0.975} + z_{0.8}) s / d)^2`` with ``s`` the pooled std ``sqrt((s_a^2 + s_b^2) / 2)``
  (Welch), ``((z_{0.975} + z_{0.8}) s_d / d)^2`` with ``s_d`` the std of the paired differences.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

LEVEL = 0.95
POWER = 0.8
ALPHA = 0.05
_EPS = 1e-15
_TINY = 1e-300


# -- distributions ----------------------------------------------------------------------
def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            return h
    raise ArithmeticError(f"incomplete beta: no convergence for a={a}, b={b}, x={x}")


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), for a, b > 0 and 0 <= x <= 1."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc: x must be in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` > 0 degrees of freedom (df may be fractional)."""
    if df <= 0:
        raise ValueError(f"t_cdf: df must be > 0, got {df}")
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t > 0 else tail


def t_sf2(t: float, df: float) -> float:
    """The two-sided p-value P(|T| >= |t|), computed without cancellation."""
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def t_ppf(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on :func:`t_cdf`)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_ppf: p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_ppf(1.0 - p, df)
    if p == 0.5:
        return 0.0
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def z_ppf(p: float) -> float:
    """The ``p`` quantile of the standard normal."""
    return statistics.NormalDist().inv_cdf(p)


# -- one point --------------------------------------------------------------------------
@dataclass(frozen=True)
class Summary:
    """Mean, sample std, n and the two-sided Student t interval at ``LEVEL`` (NaN where undefined)."""

    mean: float
    std: float
    n: int
    lo: float
    hi: float

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2.0


def summarize(values: Sequence[float], level: float = LEVEL) -> Summary:
    """Mean, sample std (0 for one value), n and ``mean ± t_{(1+level)/2, n-1} s/√n``.

    The interval needs two values: with one it is NaN, with none everything is NaN."""
    n = len(values)
    if n == 0:
        return Summary(math.nan, math.nan, 0, math.nan, math.nan)
    mean = statistics.fmean(values)
    if n == 1:
        return Summary(mean, 0.0, 1, math.nan, math.nan)
    std = statistics.stdev(values)
    half = t_ppf(0.5 + level / 2.0, n - 1) * std / math.sqrt(n)
    return Summary(mean, std, n, mean - half, mean + half)


# -- two points -------------------------------------------------------------------------
@dataclass(frozen=True)
class Comparison:
    """``b - a``: the difference of means, its interval, the test and seeds per arm for power.

    Attributes:
        test: ``paired`` or ``welch`` (``n/a`` when either side has fewer than two values).
        n_a, n_b: values on each side (for ``paired``, the number of pairs on both).
        diff: mean(b) - mean(a).
        lo, hi: the two-sided t interval of ``diff`` at ``LEVEL``.
        t, df, p: the t statistic, its degrees of freedom and the two-sided p-value
            (NaN when the standard error is 0).
        seeds_for_power: seeds per arm (pairs for ``paired``) to detect ``diff`` at 80% power,
            two-sided alpha 0.05, normal approximation, at least 2; ``inf`` when ``diff`` is 0.
    """

    test: str
    n_a: int
    n_b: int
    diff: float
    lo: float
    hi: float
    t: float
    df: float
    p: float
    seeds_for_power: float


def seeds_for_power(diff: float, std: float, paired: bool, power: float = POWER, alpha: float = ALPHA) -> float:
    """Seeds per arm to detect ``diff`` with a two-sided test at ``alpha`` with ``power``.

    Normal approximation: ``((z_{1-alpha/2} + z_{power}) std / diff)^2`` paired (``std`` of the
    differences), twice that for two independent arms (``std`` the pooled std). ``inf`` when
    ``diff`` is 0 (or NaN); at least 2 (a t-test needs two)."""
    if math.isnan(diff) or math.isnan(std) or diff == 0:
        return math.inf
    n = ((z_ppf(1.0 - alpha / 2.0) + z_ppf(power)) * std / diff) ** 2
    if not paired:
        n *= 2.0
    return float(max(2, math.ceil(n - 1e-9)))


def _test(test: str, n_a: int, n_b: int, diff: float, se: float, df: float, s: float, level: float) -> Comparison:
    paired = test == "paired"
    if se == 0:
        return Comparison(test, n_a, n_b, diff, diff, diff, math.nan, df, math.nan, seeds_for_power(diff, s, paired))
    t = diff / se
    half = t_ppf(0.5 + level / 2.0, df) * se
    return Comparison(
        test, n_a, n_b, diff, diff - half, diff + half, t, df, t_sf2(t, df), seeds_for_power(diff, s, paired)
    )


def paired_test(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Comparison:
    """Paired t-test of ``b - a`` (``a[i]`` and ``b[i]`` share a seed): df = n - 1."""
    if len(a) != len(b):
        raise ValueError(f"paired_test: {len(a)} vs {len(b)} values")
    n = len(a)
    if n < 2:
        return welch_test(a, b, level)
    d = [y - x for x, y in zip(a, b)]
    s = statistics.stdev(d)
    return _test("paired", n, n, statistics.fmean(d), s / math.sqrt(n), n - 1, s, level)


def welch_test(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Comparison:
    """Welch's t-test of ``mean(b) - mean(a)``: se = sqrt(s_a^2/n_a + s_b^2/n_b), Welch–Satterthwaite df."""
    n_a, n_b = len(a), len(b)
    diff = statistics.fmean(b) - statistics.fmean(a) if n_a and n_b else math.nan
    if n_a < 2 or n_b < 2:
        nan = math.nan
        return Comparison("n/a", n_a, n_b, diff, nan, nan, nan, nan, nan, math.inf if diff == 0 else nan)
    va, vb = statistics.variance(a), statistics.variance(b)
    qa, qb = va / n_a, vb / n_b
    se = math.sqrt(qa + qb)
    df = (qa + qb) ** 2 / (qa * qa / (n_a - 1) + qb * qb / (n_b - 1)) if se > 0 else float(n_a + n_b - 2)
    return _test("welch", n_a, n_b, diff, se, df, math.sqrt((va + vb) / 2.0), level)


def compare(a: Mapping[str, float], b: Mapping[str, float], level: float = LEVEL) -> Comparison:
    """``b`` against baseline ``a`` (seed label -> value): paired by seed when both have the same
    seeds (at least two), Welch's t-test otherwise."""
    if set(a) == set(b) and len(a) >= 2:
        seeds = list(a)
        return paired_test([a[s] for s in seeds], [b[s] for s in seeds], level)
    return welch_test(list(a.values()), list(b.values()), level)
