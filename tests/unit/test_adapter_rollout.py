"""The adapter rollout state machine: canary, gates, rollback, no retry of a failed set, resume."""

from __future__ import annotations

from dataclasses import replace

from llama_operator.adapters.drive import pod_view
from llama_operator.adapters.rollout import (
    EvaluateMetricGate,
    LoadAdapters,
    PodView,
    RollbackNotice,
    RolloutState,
    SmokeTest,
    adapter_key,
    loads_at_runtime,
    step_rollout,
)
from llama_operator.api.spec import Adapter, AdapterRolloutPolicy, MetricGate

V1 = (Adapter(name="support", source="s3://b/support", version="v1"),)
V2 = (Adapter(name="support", source="s3://b/support", version="v2"),)
V3 = (Adapter(name="support", source="s3://b/support", version="v3"),)
CANARY = AdapterRolloutPolicy()
T0 = 1000.0


def pod(name: str, adapters: tuple[Adapter, ...], gate: str = "Unknown", **fields: object) -> PodView:
    return PodView(name=name, adapters=adapter_key(adapters), containers_ready=True, gate=gate, **fields)  # type: ignore[arg-type]


def serving_v1() -> RolloutState:
    return RolloutState(phase="Succeeded", target=adapter_key(V1), serving=V1, last_good=V1)


def test_a_new_object_starts_with_its_adapters_and_smoke_tests_pods() -> None:
    step = step_rollout(V1, RolloutState(), [pod("a", V1)], replicas=1, policy=CANARY, now=T0)
    assert step.state.phase == "Progressing"
    assert step.state.serving == V1
    assert step.actions == (SmokeTest("a"),)
    done = step_rollout(V1, step.state, [pod("a", V1, "True")], replicas=1, policy=CANARY, now=T0 + 5)
    assert done.state.phase == "Succeeded"
    assert done.state.last_good == V1


def test_canary_is_tested_alone_then_the_rest() -> None:
    start = step_rollout(V2, serving_v1(), [pod("old-1", V1, "True"), pod("old-2", V1, "True")], replicas=2,
                         policy=CANARY, now=T0)  # fmt: skip
    assert start.state.serving == V2
    assert start.state.step == "Canary"
    pods = [pod("old-1", V1, "True"), pod("old-2", V1, "True"), pod("new-1", V2), pod("new-2", V2)]
    canary = step_rollout(V2, start.state, pods, replicas=2, policy=CANARY, now=T0 + 10)
    assert canary.actions == (SmokeTest("new-1"),)
    pods = [pod("old-2", V1, "True"), pod("new-1", V2, "True"), pod("new-2", V2)]
    rolling = step_rollout(V2, canary.state, pods, replicas=2, policy=CANARY, now=T0 + 20)
    assert rolling.state.step == "Rolling"
    assert rolling.actions == (SmokeTest("new-2"),)
    pods = [pod("new-1", V2, "True"), pod("new-2", V2, "True")]
    done = step_rollout(V2, rolling.state, pods, replicas=2, policy=CANARY, now=T0 + 30)
    assert done.state.phase == "Succeeded"
    assert done.state.last_good == V2


def test_failed_smoke_rolls_back_and_is_not_retried() -> None:
    start = step_rollout(V3, serving_v1(), [pod("old", V1, "True")], replicas=1, policy=CANARY, now=T0)
    failed = step_rollout(V3, start.state, [pod("old", V1, "True"), pod("new", V3, "False", gate_message="HTTP 500")],
                          replicas=1, policy=CANARY, now=T0 + 10)  # fmt: skip
    assert failed.state.phase == "RolledBack"
    assert failed.state.serving == V1
    assert adapter_key(V3) in failed.state.failed
    assert isinstance(failed.actions[0], RollbackNotice)
    assert "HTTP 500" in failed.actions[0].reason
    again = step_rollout(V3, failed.state, [pod("old", V1, "True")], replicas=1, policy=CANARY, now=T0 + 20)
    assert again.state.serving == V1
    assert again.state.phase == "RolledBack"
    assert again.actions == ()
    assert "HTTP 500" in again.state.message
    fresh = step_rollout(V2, again.state, [pod("old", V1, "True")], replicas=1, policy=CANARY, now=T0 + 30)
    assert fresh.state.phase == "Progressing"
    assert fresh.state.serving == V2
    back_to_bad = step_rollout(V3, fresh.state, [pod("old", V1, "True")], replicas=1, policy=CANARY, now=T0 + 40)
    assert back_to_bad.state.serving == V1
    assert "until the spec changes" in back_to_bad.state.message


def test_crashing_new_pod_rolls_back() -> None:
    start = step_rollout(V3, serving_v1(), [], replicas=1, policy=CANARY, now=T0)
    crashed = pod("new", V3, crash_message="error: failed to load adapter")
    step = step_rollout(V3, start.state, [pod("old", V1, "True"), crashed], replicas=1, policy=CANARY, now=T0 + 5)
    assert step.state.phase == "RolledBack"
    assert "failed to load adapter" in step.state.message


def test_timeout_rolls_back() -> None:
    policy = AdapterRolloutPolicy(timeout_seconds=60)
    start = step_rollout(V2, serving_v1(), [], replicas=1, policy=policy, now=T0)
    late = step_rollout(V2, start.state, [pod("old", V1, "True")], replicas=1, policy=policy, now=T0 + 61)
    assert late.state.phase == "RolledBack"
    assert "not done after 60s" in late.state.message


def test_metric_gate_waits_its_window_then_decides() -> None:
    policy = AdapterRolloutPolicy(metric_gate=MetricGate(query="errors", max_value=0.05, window_seconds=30))
    start = step_rollout(V2, serving_v1(), [], replicas=2, policy=policy, now=T0)
    pods = [pod("old", V1, "True"), pod("new-1", V2, "True")]
    watching = step_rollout(V2, start.state, pods, replicas=2, policy=policy, now=T0 + 5)
    assert watching.state.step == "MetricGate"
    assert watching.actions == ()
    ask = step_rollout(V2, watching.state, pods, replicas=2, policy=policy, now=T0 + 40)
    assert ask.actions == (EvaluateMetricGate(),)
    bad = step_rollout(V2, ask.state, pods, replicas=2, policy=policy, now=T0 + 40, gate_value=0.2)
    assert bad.state.phase == "RolledBack"
    good = step_rollout(
        V2, ask.state, [*pods, pod("new-2", V2)], replicas=2, policy=policy, now=T0 + 40, gate_value=0.0
    )
    assert good.state.step == "Rolling"
    assert good.actions == (SmokeTest("new-2"),)


def test_resume_after_restart_repeats_nothing_done() -> None:
    """The state in status is all an operator needs: re-running a step is idempotent."""
    start = step_rollout(V2, serving_v1(), [], replicas=2, policy=CANARY, now=T0)
    pods = [pod("old-2", V1, "True"), pod("new-1", V2, "True"), pod("new-2", V2)]
    first = step_rollout(V2, start.state, pods, replicas=2, policy=CANARY, now=T0 + 10)
    again = step_rollout(V2, first.state, pods, replicas=2, policy=CANARY, now=T0 + 11)
    assert first.state.serving == again.state.serving == V2
    assert first.state.verified_pods == again.state.verified_pods == ("new-1",)
    assert again.actions == (SmokeTest("new-2"),)


def test_steady_state_smoke_tests_restarted_pods() -> None:
    state = serving_v1()
    step = step_rollout(V1, state, [pod("a", V1, "True"), pod("b", V1)], replicas=2, policy=CANARY, now=T0)
    assert step.actions == (SmokeTest("b"),)
    assert step.state == state


def test_all_at_once_tests_every_new_pod() -> None:
    policy = AdapterRolloutPolicy(strategy="AllAtOnce")
    start = step_rollout(V2, serving_v1(), [], replicas=3, policy=policy, now=T0)
    pods = [pod(f"new-{i}", V2) for i in range(3)]
    step = step_rollout(V2, start.state, pods, replicas=3, policy=policy, now=T0 + 5)
    assert {a.pod for a in step.actions if isinstance(a, SmokeTest)} == {"new-0", "new-1", "new-2"}


def test_pause_after_canary() -> None:
    policy = AdapterRolloutPolicy(pause_seconds=30)
    start = step_rollout(V2, serving_v1(), [], replicas=2, policy=policy, now=T0)
    pods = [pod("old", V1, "True"), pod("new-1", V2, "True"), pod("new-2", V2)]
    paused = step_rollout(V2, start.state, pods, replicas=2, policy=policy, now=T0 + 5)
    assert paused.actions == ()
    assert "pausing" in paused.state.message
    later = step_rollout(V2, replace(paused.state), pods, replicas=2, policy=policy, now=T0 + 40)
    assert later.actions == (SmokeTest("new-2"),)


HUB_V1 = (Adapter(name="support", source="hf://org/support-v1", version="v1"),)
HUB_V2 = (Adapter(name="support", source="hf://org/support-v2", version="v2"),)


def test_runtime_loading_is_for_vllm_with_hub_adapters_only() -> None:
    assert loads_at_runtime("vllm", HUB_V1)
    assert not loads_at_runtime("vllm", V1)  # s3: the pod must fetch it at start
    assert not loads_at_runtime("tgi", HUB_V1)
    assert not loads_at_runtime("vllm", ())


def test_runtime_rollout_loads_the_canary_then_one_pod_at_a_time() -> None:
    state = RolloutState(phase="Succeeded", target=adapter_key(HUB_V1), serving=HUB_V1, last_good=HUB_V1)
    pods = [pod(n, HUB_V1, "True") for n in ("a", "b", "c")]
    start = step_rollout(HUB_V2, state, pods, replicas=3, policy=CANARY, now=T0, runtime=True)
    assert start.actions == (LoadAdapters("a"),)
    canary_done = [pod("a", HUB_V2, "True"), pod("b", HUB_V1, "True"), pod("c", HUB_V1, "True")]
    next_one = step_rollout(HUB_V2, start.state, canary_done, replicas=3, policy=CANARY, now=T0 + 5, runtime=True)
    assert next_one.state.step == "Rolling"
    assert next_one.actions == (LoadAdapters("b"),)
    waiting = [pod("a", HUB_V2, "True"), pod("b", HUB_V2), pod("c", HUB_V1, "True")]
    held = step_rollout(HUB_V2, next_one.state, waiting, replicas=3, policy=CANARY, now=T0 + 6, runtime=True)
    assert held.actions == (), "one pod at a time: b awaits its verdict"
    done = [pod(n, HUB_V2, "True") for n in ("a", "b", "c")]
    finished = step_rollout(HUB_V2, held.state, done, replicas=3, policy=CANARY, now=T0 + 9, runtime=True)
    assert finished.state.phase == "Succeeded"


def test_runtime_rollback_reloads_the_canary_and_restarted_pods_get_loaded() -> None:
    state = RolloutState(phase="Succeeded", target=adapter_key(HUB_V1), serving=HUB_V1, last_good=HUB_V1)
    start = step_rollout(HUB_V2, state, [], replicas=2, policy=CANARY, now=T0, runtime=True)
    failed = [pod("a", HUB_V2, "False", gate_message="HTTP 400: cannot load"), pod("b", HUB_V1, "True")]
    rolled = step_rollout(HUB_V2, start.state, failed, replicas=2, policy=CANARY, now=T0 + 3, runtime=True)
    assert rolled.state.phase == "RolledBack"
    again = step_rollout(HUB_V2, rolled.state, failed, replicas=2, policy=CANARY, now=T0 + 4, runtime=True)
    assert again.actions == (LoadAdapters("a"),), "the canary gets the last good set back"
    restarted = [PodView(name="c", adapters="", containers_ready=True, gate="Unknown"), pod("b", HUB_V1, "True")]
    steady = step_rollout(HUB_V1, serving_v1_hub(), restarted, replicas=2, policy=CANARY, now=T0, runtime=True)
    assert LoadAdapters("c") in steady.actions


def test_a_spec_changed_back_during_a_load_is_not_failed_by_the_load_in_flight() -> None:
    """v1 -> v2 -> v1 quickly: pod a is out of traffic loading v2 (its gate False, 'loading [v2]') and still
    holds v1; going back to v1 waits for that load's verdict instead of rolling v1 back as failed."""
    to_v2 = step_rollout(HUB_V2, serving_v1_hub(), [pod("a", HUB_V1, "True"), pod("b", HUB_V1, "True")],
                         replicas=2, policy=CANARY, now=T0, runtime=True)  # fmt: skip
    assert to_v2.actions == (LoadAdapters("a"),)
    loading = [pod("a", HUB_V1, "False", gate_message="loading [support@v2]", busy=True), pod("b", HUB_V1, "True")]
    back = step_rollout(HUB_V1, to_v2.state, loading, replicas=2, policy=CANARY, now=T0 + 1, runtime=True)
    assert back.state.phase == "Progressing", back.state.message
    assert back.state.failed == ()
    assert back.actions == (), "nothing new while a's load is in flight"
    reloaded = [pod("a", HUB_V1, "True"), pod("b", HUB_V1, "True")]
    done = step_rollout(HUB_V1, back.state, reloaded, replicas=2, policy=CANARY, now=T0 + 5, runtime=True)
    assert done.state.phase == "Succeeded"


def serving_v1_hub() -> RolloutState:
    return RolloutState(phase="Succeeded", target=adapter_key(HUB_V1), serving=HUB_V1, last_good=HUB_V1)


def test_canary_percent_rounds_up_and_wins_over_replicas() -> None:
    policy = AdapterRolloutPolicy(canary_replicas=1, canary_percent=25)
    start = step_rollout(V2, serving_v1(), [], replicas=6, policy=policy, now=T0)
    pods = [pod(f"old-{i}", V1, "True") for i in range(6)] + [pod(f"new-{i}", V2) for i in range(3)]
    step = step_rollout(V2, start.state, pods, replicas=6, policy=policy, now=T0 + 1)
    assert step.actions == (SmokeTest("new-0"), SmokeTest("new-1")), "25% of 6 replicas rounds up to 2 pods"


def test_a_pod_left_out_of_traffic_for_a_load_that_never_reported_has_no_verdict() -> None:
    """The operator died mid-load: the gate still reads LoadingAdapters, which is no smoke verdict."""
    conditions = [
        {"type": "ContainersReady", "status": "True"},
        {"type": "llamaops.io/adapters-loaded", "status": "True", "message": "support@v1"},
        {"type": "llamaops.io/adapters-verified", "status": "False", "reason": "LoadingAdapters",
         "message": "loading [support@v2]"},
    ]  # fmt: skip
    view = pod_view({"metadata": {"name": "a"}, "status": {"conditions": conditions}}, runtime=True)
    assert (view.adapters, view.gate) == ("support@v1", "Unknown")
    failed = [*conditions[:2], {**conditions[2], "reason": "SmokeRequestFailed", "message": "HTTP 404"}]
    assert pod_view({"metadata": {"name": "a"}, "status": {"conditions": failed}}, runtime=True).gate == "False"
