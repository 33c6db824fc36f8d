"""Kubernetes quantities read exactly, in every form the apiserver accepts, and garbage refused by name."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llama_operator.sizing.quantity import parse_capacity, parse_quantity

BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
DECIMAL = {
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 10**3),
    "": Fraction(1),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
}
MULTIPLIERS = {**BINARY, **DECIMAL}

signs = st.sampled_from(["", "+", "-"])


@given(sign=signs, value=st.integers(0, 10**30), suffix=st.sampled_from(sorted(MULTIPLIERS)))
def test_an_integer_with_any_suffix_is_its_value_times_the_multiplier(sign: str, value: int, suffix: str) -> None:
    expected = value * MULTIPLIERS[suffix]
    assert parse_quantity(f"{sign}{value}{suffix}") == (-expected if sign == "-" else expected)


@given(
    whole=st.integers(0, 10**9),
    fraction_digits=st.text("0123456789", min_size=1, max_size=9),
    suffix=st.sampled_from(sorted(MULTIPLIERS)),
)
def test_a_decimal_fraction_with_any_suffix_is_exact(whole: int, fraction_digits: str, suffix: str) -> None:
    value = whole + Fraction(int(fraction_digits), 10 ** len(fraction_digits))
    assert parse_quantity(f"{whole}.{fraction_digits}{suffix}") == value * MULTIPLIERS[suffix]


@given(value=st.integers(0, 10**12), exponent=st.integers(-30, 30), marker=st.sampled_from(["e", "E"]))
def test_an_exponent_scales_by_powers_of_ten(value: int, exponent: int, marker: str) -> None:
    assert parse_quantity(f"{value}{marker}{exponent}") == value * Fraction(10) ** exponent
    if exponent >= 0:
        assert parse_quantity(f"{value}{marker}+{exponent}") == value * 10**exponent


@given(value=st.integers(0, 2**63 - 1))
def test_every_int64_byte_count_reads_back_exactly(value: int) -> None:
    """Above 2**53 a float would round; a node's memory must not."""
    assert parse_capacity(str(value)) == value


@given(value=st.integers(0, 10**6), suffix=st.sampled_from(sorted(BINARY)))
def test_binary_and_decimal_spellings_of_one_size_agree(value: int, suffix: str) -> None:
    """The apiserver may rewrite `65536Mi` as `64Gi`, or bytes as `...k`; the number stays the same."""
    assert parse_quantity(f"{value}{suffix}") == parse_quantity(str(value * BINARY[suffix]))
    assert parse_quantity(f"{value * 1000}m") == parse_quantity(str(value))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1k", 1000),
        ("64Gi", 64 * 2**30),
        ("65536Mi", 64 * 2**30),
        ("1e3", 1000),
        ("500m", Fraction(1, 2)),
        ("1.5Gi", 3 * 2**29),
        (".5", Fraction(1, 2)),
        ("1.", 1),
        ("2E", 2 * 10**18),  # exa, not an exponent without digits
        ("2E2", 200),
        ("-1.5k", -1500),
        ("0", 0),
    ],
)
def test_quantities_as_written_in_node_status(text: str, expected: Fraction | int) -> None:
    assert parse_quantity(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "", " 1Gi", "1Gi ", "1 Gi", "Gi", "1gi", "1GB", "1KI", "1K", "0x10", "1_000", "1,5", "1.2.3", "--1",
        "+-1", "e3", "1e", "1e3Gi", "1Gi3", "1.5e3.5", "nan", "inf", "lots", "\u0661", "1ee3",
    ],
)  # fmt: skip
def test_garbage_is_refused_naming_the_text(text: str) -> None:
    with pytest.raises(ValueError, match="is not a Kubernetes quantity") as refused:
        parse_quantity(text)
    assert repr(text) in str(refused.value)


def test_an_absurd_exponent_is_refused_quickly() -> None:
    with pytest.raises(ValueError, match="'1e999999999': exponent 999999999 is out of range"):
        parse_quantity("1e999999999")


@pytest.mark.parametrize(("text", "expected"), [("1k", 1000), ("1500m", 1), ("999m", 0), ("1.9", 1), ("2Ki", 2048)])
def test_capacity_is_whole_units_rounded_down(text: str, expected: int) -> None:
    assert parse_capacity(text) == expected


def test_negative_capacity_is_refused() -> None:
    with pytest.raises(ValueError, match="'-1' is negative"):
        parse_capacity("-1")


def test_a_number_too_long_to_convert_is_refused_as_a_value_error() -> None:
    with pytest.raises(ValueError, match="Exceeds the limit"):
        parse_quantity("1" * 5000 + "Gi")
