"""Kubernetes resource quantities (`64Gi`, `500m`, `1k`, `1e3`) as exact numbers.

The grammar is the one the apiserver accepts for `resources` and a Node's `capacity` and
`allocatable`: a signed decimal number, then at most one suffix, either binary (Ki Mi Gi Ti Pi Ei,
powers of 1024), decimal (n u m k M G T P E, powers of 1000), or an exponent (`e3`, `E-2`).
The apiserver writes quantities in a canonical form of its own choosing, so `1000` GPUs come back
as `1k` and `1536Mi` may come back as `1.5Gi`: read them with `parse_quantity`, never `int()`.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

BINARY_SUFFIXES = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4, "Pi": 1024**5, "Ei": 1024**6}
DECIMAL_SUFFIXES = {
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 10**3),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
}
# Far beyond any real capacity (1e64 bytes); keeps `1e999999999` from costing minutes of arithmetic.
MAX_EXPONENT = 64

_SUFFIX = "|".join(sorted([*BINARY_SUFFIXES, *DECIMAL_SUFFIXES], key=len, reverse=True))
_QUANTITY = re.compile(
    rf"(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(?:(?P<suffix>{_SUFFIX})|[eE](?P<exponent>[+-]?[0-9]+))?"
)


def parse_quantity(text: str) -> Fraction:
    """The exact value of a quantity: `parse_quantity("1.5Gi") == 1610612736`, `parse_quantity("500m") == 1/2`.

    Raises ValueError naming the text when it is not a quantity.
    """
    match = _QUANTITY.fullmatch(text)
    if match is None:
        raise ValueError(
            f"{text!r} is not a Kubernetes quantity (a number with an optional suffix: Ki Mi Gi Ti Pi Ei, "
            "n u m k M G T P E, or an exponent such as e3)"
        )
    try:
        number = Fraction(match["number"])
    except ValueError as error:  # more digits than Python converts (4300)
        raise ValueError(f"{text[:40]!r}...: {error}") from error
    if match["suffix"] in BINARY_SUFFIXES:
        return number * BINARY_SUFFIXES[match["suffix"]]
    if match["suffix"] is not None:
        return number * DECIMAL_SUFFIXES[match["suffix"]]
    if match["exponent"] is not None:
        exponent = int(match["exponent"])
        if abs(exponent) > MAX_EXPONENT:
            raise ValueError(f"{text!r}: exponent {exponent} is out of range (at most {MAX_EXPONENT} either way)")
        return number * Fraction(10) ** exponent
    return number


def parse_capacity(text: str) -> int:
    """A whole, non-negative amount of a resource a node offers (bytes, GPUs), rounded down.

    Rounding down never assumes more than the node has (`1500m` GPUs are 1). Raises ValueError
    naming the text when it is not a quantity or is negative.
    """
    value = parse_quantity(text)
    if value < 0:
        raise ValueError(f"{text!r} is negative; a node cannot offer less than nothing")
    return math.floor(value)
