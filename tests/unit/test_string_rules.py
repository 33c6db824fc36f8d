"""The string rules' regular expressions, on the spellings that matter (the apiserver runs the same ones:
tests/integration/test_crd_admission.py sends the cases of tests/fixtures/invalid_manifests.py)."""

from __future__ import annotations

import pytest

from llama_operator.api.string_rules import (
    DOT_OR_EMPTY_SEGMENT,
    HF_REPO,
    LABEL_KEY,
    LOCAL_URL,
    NAMES_A_FILE,
    VISIBLE_NAME,
    cel_matches,
    fully_matches,
    python_regex,
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
        (VISIBLE_NAME, "meta-llama/Llama-3.1-8B-Instruct", True),
        (VISIBLE_NAME, "llama3.1:8b", True),
        (VISIBLE_NAME, "\u043c\u043e\u0434\u0435\u043b\u044c-\u00e9", True),  # letters of any script
        (VISIBLE_NAME, "chat'\"$(id)`x`;&&", True),  # one argument, never through a shell
        (VISIBLE_NAME, "a-", True),
        (VISIBLE_NAME, "-", False),
        (VISIBLE_NAME, "--port", False),
        (VISIBLE_NAME, "chat 8b", False),
        (VISIBLE_NAME, "chat\t8b", False),
        (VISIBLE_NAME, "chat\x1b[2J", False),
        (VISIBLE_NAME, "chat\x85", False),  # C1 next line
        (VISIBLE_NAME, "chat\u00a08b", False),  # no-break space
        (VISIBLE_NAME, "chat\u200b8b", False),  # zero-width space
        (VISIBLE_NAME, "chat\u202eexe.8b", False),  # right-to-left override
        (VISIBLE_NAME, "chat\u2066", False),  # left-to-right isolate
        (VISIBLE_NAME, "chat\u3000", False),  # ideographic space
        (VISIBLE_NAME, "\ufeffchat", False),  # byte order mark
        (LABEL_KEY, "pool", True),
        (LABEL_KEY, "nvidia.com/gpu.product", True),
        (LABEL_KEY, "Zone_1.a", True),
        (LABEL_KEY, f"{'a' * 63}", True),
        (LABEL_KEY, f"{'a' * 64}", False),
        (LABEL_KEY, "gpu pool", False),
        (LABEL_KEY, "Example.com/pool", False),
        (LABEL_KEY, "/pool", False),
        (LABEL_KEY, "pool-", False),
    ],
)
def test_source_regexes(regex: str, value: str, matches: bool) -> None:
    assert fully_matches(regex, value) is matches


def test_an_re2_code_point_reads_the_same_in_python() -> None:
    assert python_regex(r"[^\x{202e}\x00-\x1f]") == r"[^\U0000202e\x00-\x1f]"
    assert fully_matches(r"\x{202e}", "\u202e")


def test_a_cel_regex_is_anchored_and_its_backslashes_escaped() -> None:
    assert cel_matches("self.x", r"a\.b") == r"self.x.matches('^a\\.b$')"
    assert cel_matches("self.x", "a", ignore_case=True) == "self.x.matches('(?i)^a$')"
    with pytest.raises(ValueError, match="quote"):
        cel_matches("self.x", "a'b")
