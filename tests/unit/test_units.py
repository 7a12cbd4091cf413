import pytest

from gpuq.errors import InvalidInput
from gpuq.units import format_duration, format_mib, parse_duration_s, parse_fraction, parse_size_mib


@pytest.mark.parametrize("text, mib", [
    ("10GiB", 10240), ("512MiB", 512), ("1.5G", 1536), ("24gb", 22889), ("1TiB", 1024 * 1024),
    ("1024KiB", 1), ("1KiB", 1),
])
def test_sizes(text, mib):
    assert parse_size_mib(text) == mib


@pytest.mark.parametrize("text", ["10GB?", "ten GiB", "", "5 parsecs", "-1GiB", "0", "0MiB", "10", "24"])
def test_bad_sizes(text):
    with pytest.raises(InvalidInput) as e:
        parse_size_mib(text, what="--gpu-mem")
    assert "--gpu-mem" in str(e.value)


@pytest.mark.parametrize("text, s", [("2h", 7200), ("90m", 5400), ("1h30m", 5400), ("45s", 45), ("45", 45),
                                     ("1d", 86400), ("01:30:00", 5400), ("05:00", 300), ("1.5h", 5400)])
def test_durations(text, s):
    assert parse_duration_s(text) == s


@pytest.mark.parametrize("text", ["soon", "", "0s", "h", "1y", "-5m"])
def test_bad_durations(text):
    with pytest.raises(InvalidInput):
        parse_duration_s(text)


def test_fractions():
    assert parse_fraction("0.25") == 0.25
    for bad in ("0", "1.01", "-0.5", "nan", "x"):
        with pytest.raises(InvalidInput):
            parse_fraction(bad)


def test_formatting():
    assert format_mib(3174) == "3.1 GiB"
    assert format_mib(512) == "512 MiB"
    assert format_duration(3725) == "1:02:05"
    assert format_duration(65) == "1:05"
    assert format_duration(90000) == "1d01h"
