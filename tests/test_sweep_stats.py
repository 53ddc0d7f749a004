"""``cepo.sweep.stats``: t quantiles, intervals, paired and Welch tests, seeds for power, on
hand-made numbers whose answers are known from tables or closed forms."""

import math

import pytest

from cepo.sweep.stats import (
    betainc,
    compare,
    paired_test,
    seeds_for_power,
    summarize,
    t_cdf,
    t_ppf,
    t_sf2,
    welch_test,
    z_ppf,
)


def two_sided_p(t: float, df: int) -> float:
    """Closed forms of the two-sided p-value P(|T| >= |t|) of Student's t:

    - df = 1 (Cauchy): 1 - (2/pi) atan|t|;
    - df = 2: 1 - |t| / sqrt(2 + t^2);
    - df = 4: with x = |t| / sqrt(4 + t^2), the cdf is 1/2 + (3/4) x (1 - x^2/3), so
      p = 1 - (3/2) x + (1/2) x^3 (check: x = 1 gives 0).
    """
    if df == 1:
        return 1 - 2 / math.pi * math.atan(abs(t))
    if df == 2:
        return 1 - abs(t) / math.sqrt(2 + t * t)
    if df == 4:
        x = abs(t) / math.sqrt(4 + t * t)
        return 1 - 1.5 * x + 0.5 * x**3
    raise ValueError(df)


def simpson_two_sided_p(t: float, df: float, intervals: int = 20_000) -> float:
    """1 - 2 * integral_0^|t| of the t density (1 + x^2/df)^(-(df+1)/2) / (sqrt(df) B(df/2, 1/2)),
    by Simpson's rule: a check for fractional df that shares no code with cepo's."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def f(x):
        return math.exp(log_c - (df + 1) / 2 * math.log1p(x * x / df))

    h = abs(t) / intervals
    total = f(0) + f(abs(t)) + sum((4 if i % 2 else 2) * f(i * h) for i in range(1, intervals))
    return 1 - 2 * total * h / 3


def test_fractional_df_matches_numerical_integration():
    for df in (1.5, 3.3, 5.157894736842106, 17.8):
        for t in (0.3, 1.0, 2.5, 6.0):
            assert t_sf2(t, df) == pytest.approx(simpson_two_sided_p(t, df), abs=1e-9)


# Student t 0.975 quantiles from the published tables (e.g. NIST/SEMATECH e-Handbook 1.3.6.7.2).
T975 = {1: 12.706205, 2: 4.302653, 3: 3.182446, 4: 2.776445, 5: 2.570582, 9: 2.262157, 10: 2.228139, 30: 2.042272}


@pytest.mark.parametrize(("df", "expected"), sorted(T975.items()))
def test_t_quantiles_match_the_tables(df, expected):
    assert t_ppf(0.975, df) == pytest.approx(expected, abs=1e-6)
    assert t_ppf(0.025, df) == pytest.approx(-expected, abs=1e-6)
    assert t_cdf(expected, df) == pytest.approx(0.975, abs=1e-6)


def test_t_quantiles_have_closed_forms_at_one_and_two_df():
    """df = 1: t_p = tan(pi (p - 1/2)); df = 2: t_p = (2p - 1) sqrt(2 / (4p (1 - p)))."""
    for p in (0.6, 0.8, 0.9, 0.95, 0.975, 0.995, 0.9995):
        assert t_ppf(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)
        assert t_ppf(p, 2) == pytest.approx((2 * p - 1) * math.sqrt(2 / (4 * p * (1 - p))), rel=1e-9)
    assert t_ppf(0.5, 3) == 0.0
    assert t_ppf(0.975, 1e7) == pytest.approx(z_ppf(0.975), abs=1e-6)  # t tends to the normal
    assert z_ppf(0.975) == pytest.approx(1.959964, abs=1e-6) and z_ppf(0.8) == pytest.approx(0.841621, abs=1e-6)
    with pytest.raises(ValueError):
        t_ppf(1.0, 3)


@pytest.mark.parametrize("df", [1, 2, 4])
def test_t_distribution_matches_the_closed_forms(df):
    for t in (0.0, 0.1, 0.5, 1.0, 2.0, 3.7, 10.0, 100.0):
        assert t_sf2(t, df) == pytest.approx(two_sided_p(t, df), abs=1e-12)
        assert t_cdf(t, df) == pytest.approx(1 - two_sided_p(t, df) / 2, abs=1e-12)
        assert t_cdf(-t, df) == pytest.approx(two_sided_p(t, df) / 2, abs=1e-12)


def test_incomplete_beta_special_cases():
    """I_x(1, 1) = x; I_x(a, 1) = x^a; I_x(1, b) = 1 - (1 - x)^b; I_x(a, b) = 1 - I_{1-x}(b, a)."""
    for x in (0.0, 0.01, 0.3, 0.5, 0.77, 1.0):
        assert betainc(1, 1, x) == pytest.approx(x, abs=1e-14)
        assert betainc(2.5, 1, x) == pytest.approx(x**2.5, abs=1e-13)
        assert betainc(1, 3.5, x) == pytest.approx(1 - (1 - x) ** 3.5, abs=1e-13)
        assert betainc(2.2, 0.7, x) == pytest.approx(1 - betainc(0.7, 2.2, 1 - x), abs=1e-13)


def test_summary_is_mean_std_n_and_the_t_interval():
    """[1, 2, 3, 4, 5]: mean 3, std sqrt(2.5), so 3 ± 2.776445 sqrt(2.5 / 5) = 3 ± 1.963243."""
    s = summarize([1, 2, 3, 4, 5])
    assert (s.mean, s.n) == (3, 5) and s.std == pytest.approx(math.sqrt(2.5))
    assert s.lo == pytest.approx(3 - 1.963243, abs=1e-6) and s.hi == pytest.approx(3 + 1.963243, abs=1e-6)
    ten = summarize(list(range(10)))  # mean 4.5, var 55/6: 4.5 ± 2.262157 sqrt(55/60)
    assert ten.half_width == pytest.approx(2.262157 * math.sqrt(55 / 60), abs=1e-6)
    one = summarize([0.4])
    assert (one.mean, one.std, one.n) == (0.4, 0.0, 1) and math.isnan(one.lo) and math.isnan(one.hi)
    assert summarize([]).n == 0 and math.isnan(summarize([]).mean)


def test_paired_test_by_hand():
    """b - a = [1, 2, 3, 4, 5]: mean 3, s_d = sqrt(2.5), se = sqrt(0.5), t = 3 sqrt(2) = 4.242641,
    df = 4, p = 1 - 1.5 x + 0.5 x^3 with x = t / sqrt(4 + t^2) = 3 sqrt(2) / sqrt(22) (0.013236);
    CI 3 ± 2.776445 sqrt(0.5) = [1.036757, 4.963243]; power: ((1.959964 + 0.841621) sqrt(2.5) / 3)^2
    = 2.18 -> 3 pairs."""
    a = [10.0, 20.0, 30.0, 40.0, 50.0]
    b = [11.0, 22.0, 33.0, 44.0, 55.0]
    c = paired_test(a, b)
    assert c.test == "paired" and (c.n_a, c.n_b, c.df) == (5, 5, 4)
    assert c.diff == pytest.approx(3) and c.t == pytest.approx(3 * math.sqrt(2))
    x = 3 * math.sqrt(2) / math.sqrt(22)
    assert c.p == pytest.approx(1 - 1.5 * x + 0.5 * x**3, abs=1e-12)
    assert c.p == pytest.approx(0.013236, abs=1e-6)
    assert (c.lo, c.hi) == (pytest.approx(1.036757, abs=1e-6), pytest.approx(4.963243, abs=1e-6))
    assert c.seeds_for_power == 3
    # the same numbers unpaired: Welch sees the large between-seed spread, and no effect
    w = welch_test(a, b)
    assert w.test == "welch" and w.p > 0.7


def test_welch_test_by_hand_equal_variances():
    """a = [1, 2, 3], b = [4, 5, 6]: variances 1 and 1, se = sqrt(2/3), t = 3 / sqrt(2/3) = 3.674235,
    df = (2/3)^2 / (2 (1/3)^2 / 2) = 4; p = 1 - 1.5 x + 0.5 x^3 with x = t / sqrt(4 + t^2)
    (0.021311); CI 3 ± 2.776445 sqrt(2/3); power: 2 ((1.959964 + 0.841621) 1 / 3)^2 = 1.74 -> 2."""
    c = welch_test([1, 2, 3], [4, 5, 6])
    assert c.test == "welch" and c.df == pytest.approx(4) and c.t == pytest.approx(3 / math.sqrt(2 / 3))
    x = c.t / math.sqrt(4 + c.t**2)
    assert c.p == pytest.approx(1 - 1.5 * x + 0.5 * x**3, abs=1e-12)
    assert c.p == pytest.approx(0.021311, abs=1e-6)
    half = 2.776445 * math.sqrt(2 / 3)
    assert (c.lo, c.hi) == (pytest.approx(3 - half, abs=1e-6), pytest.approx(3 + half, abs=1e-6))
    assert c.seeds_for_power == 2


def test_welch_test_by_hand_unequal_variances():
    """a = [1, 2, 3] (var 1), b = [2, 4, 6, 8, 10] (var 10): diff 4, se^2 = 1/3 + 2 = 7/3,
    df = (7/3)^2 / ((1/3)^2 / 2 + 2^2 / 4) = (49/9) / (19/18) = 98/19 = 5.157895 (not the pooled
    n_a + n_b - 2 = 6); t = 4 / sqrt(7/3) = 2.618615. The p-value at this fractional df is checked
    against Simpson's rule on the t density (independent of the incomplete beta function)."""
    c = welch_test([1, 2, 3], [2, 4, 6, 8, 10])
    assert c.df == pytest.approx(98 / 19) and c.t == pytest.approx(4 / math.sqrt(7 / 3))
    assert c.p == pytest.approx(simpson_two_sided_p(c.t, 98 / 19), abs=1e-9)
    assert c.p == pytest.approx(0.045776, abs=1e-6)
    assert c.hi - 4 == pytest.approx(t_ppf(0.975, 98 / 19) * math.sqrt(7 / 3))
    # the fractional df lies between the integer ones
    assert t_ppf(0.975, 6) < t_ppf(0.975, 98 / 19) < t_ppf(0.975, 5)


def test_seeds_for_power_rule_of_sixteen():
    """Effect size d/s = 1: 2 (1.959964 + 0.841621)^2 = 15.7 -> 16 per arm (Lehr's rule of 16);
    paired, ((z + z) s_d / d)^2 = 7.85 -> 8 pairs; d/s = 0.5 quadruples: 62.8 -> 63."""
    assert seeds_for_power(0.1, 0.1, paired=False) == 16
    assert seeds_for_power(-0.1, 0.1, paired=True) == 8
    assert seeds_for_power(0.05, 0.1, paired=False) == 63
    assert seeds_for_power(0.0, 0.1, paired=False) == math.inf
    assert seeds_for_power(0.3, 0.0, paired=True) == 2  # no spread: the floor of a t-test


def test_compare_pairs_by_seed_only_when_the_seeds_match():
    a = {"0": 0.30, "1": 0.35, "2": 0.40}
    b = {"0": 0.32, "1": 0.38, "2": 0.41}
    assert compare(a, b).test == "paired"
    assert compare(a, {"2": 0.41, "0": 0.32, "1": 0.38}) == compare(a, b)  # by seed, not by order
    assert compare(a, {"0": 0.32, "1": 0.38}).test == "welch"  # seed 2 failed on one side
    assert compare(a, {"0": 0.32, "1": 0.38, "3": 0.41}).test == "welch"
    lonely = compare({"0": 0.3}, {"0": 0.4})
    assert lonely.test == "n/a" and lonely.diff == pytest.approx(0.1) and math.isnan(lonely.p)
    same = compare(a, dict(a))  # no difference at all: p and CI are undefined, power infinite
    assert same.diff == 0 and math.isnan(same.p) and same.seeds_for_power == math.inf
