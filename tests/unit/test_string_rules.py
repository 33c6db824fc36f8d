"""The string rules' regular expressions, on the spellings that matter (the apiserver runs the same ones:
tests/integration/test_crd_admission.py sends the cases of tests/fixtures/invalid_manifests.py)."""

from __future__ import annotations

import pytest

from llama_operator.api.string_rules import (
    DOT_OR_EMPTY_SEGMENT,
    HF_REPO,
    LOCAL_URL,
    NAMES_A_FILE,
    cel_matches,
    fully_matches,
)


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:9090",
        "http://LocalHost./",
        "http://prometheus.localhost:9090",
        "http://127.0.0.1:9090",
        "https://127.1/api",
        "http://0.0.0.0:9090",
        "http://0:9090",
        "http://169.254.169.254/latest/meta-data",
        "http://2130706433/",  # 127.0.0.1 as one number
        "http://0x7f000001/",
        "http://0x7f.0.0.1/",
        "http://0177.0.0.1/",  # octal
        "http://[::1]:9090",
        "http://[::]/",
        "http://[0:0:0:0:0:0:0:1]/",
        "http://[fe80::1%25eth0]:9090/",
        "http://[::ffff:127.0.0.1]/",
        "http://user:pass@127.0.0.1/",
        "http://prometheus.monitoring:9090@localhost/",
    ],
)
def test_a_url_of_this_host_or_link_local_is_local(url: str) -> None:
    assert fully_matches(LOCAL_URL, url, ignore_case=True)


@pytest.mark.parametrize(
    "url",
    [
        "http://prometheus-operated.monitoring:9090",
        "http://localhost-metrics.example.com/",
        "http://10.96.0.12:9090",
        "http://192.168.1.20/",
        "https://thanos.example.com/127.0.0.1",
        "http://0x7f.example.com/",
        "http://[2001:db8::1]:9090/",
        "http://127-0-0-1.nip.example/",
    ],
)
def test_a_url_elsewhere_is_not_local(url: str) -> None:
    assert not fully_matches(LOCAL_URL, url, ignore_case=True)


@pytest.mark.parametrize(
    ("regex", "value", "matches"),
    [
        (DOT_OR_EMPTY_SEGMENT, "pvc://models/..", True),
        (DOT_OR_EMPTY_SEGMENT, "pvc://./x", True),
        (DOT_OR_EMPTY_SEGMENT, "s3://b//k", True),
        (DOT_OR_EMPTY_SEGMENT, "https:///x", True),
        (DOT_OR_EMPTY_SEGMENT, "pvc://models/.../..x/x..", False),
        (DOT_OR_EMPTY_SEGMENT, "s3://b/prefix/", False),
        (HF_REPO, "hf://org/repo", True),
        (HF_REPO, "hf://org/repo/sub/file.gguf", True),
        (HF_REPO, "hf://org", False),
        (HF_REPO, "hf://org/-repo", False),
        (HF_REPO, f"hf://org/{'r' * 97}", False),
        (NAMES_A_FILE, "hf://org/repo/f.gguf", True),
        (NAMES_A_FILE, "hf://org/repo/", False),
        (NAMES_A_FILE, "pvc://models/f.gguf", True),
        (NAMES_A_FILE, "pvc://models", False),
    ],
)
def test_source_regexes(regex: str, value: str, matches: bool) -> None:
    assert fully_matches(regex, value) is matches


def test_a_cel_regex_is_anchored_and_its_backslashes_escaped() -> None:
    assert cel_matches("self.x", r"a\.b") == r"self.x.matches('^a\\.b$')"
    assert cel_matches("self.x", "a", ignore_case=True) == "self.x.matches('(?i)^a$')"
    with pytest.raises(ValueError, match="quote"):
        cel_matches("self.x", "a'b")
