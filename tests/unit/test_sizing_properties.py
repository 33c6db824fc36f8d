"""Properties of the memory model and the fit decision, over the catalog and random valid architectures.

The expected numbers are recomputed here from the model's facts, not taken from the sizing module:
weights = parameters x bits per weight / 8 (checkpoint formats keep the embeddings in bf16), and
KV cache = 2 x layers x KV heads x head dim x bytes x context x sequences, with layers split over
pipeline stages (llama.cpp: over its GPUs) and KV heads over tensor-parallel ranks (or replicated).
"""

from __future__ import annotations

from fractions import Fraction
from itertools import pairwise

from hypothesis import event, given, settings
from hypothesis import strategies as st

from llama_operator.engines.registry import engine_args, engine_sizing_args
from llama_operator.sizing.catalog import CATALOG, ModelFacts
from llama_operator.sizing.fit import Candidate, SizingRequest, candidates, decide
from llama_operator.sizing.gpu_classes import DEFAULT_GPU_CLASSES, DEFAULT_INVENTORY
from llama_operator.sizing.memory import ServingEngine, Shape, Workload, estimate
from llama_operator.sizing.quantization import QUANTIZATIONS, weight_bytes

PROPERTY = settings(max_examples=200, deadline=None)

ENGINES: tuple[ServingEngine, ...] = ("vllm", "tgi", "llamacpp")
TENSOR_PARALLEL = (1, 2, 4, 8, 16)
CARD_BYTES = tuple(c.memory_bytes for c in DEFAULT_GPU_CLASSES)
# The share of a card (or of a CPU node) each engine may fill, as the engines document it.
USABLE_FRACTION = {"vllm": 0.90, "tgi": 0.90, "llamacpp": 0.95, "cpu": 0.85}

contexts = st.integers(256, 131072)
sequences = st.integers(1, 256)
quantizations = st.sampled_from(sorted(QUANTIZATIONS))


@st.composite
def random_models(draw: st.DrawFn) -> ModelFacts:
    """A valid decoder-only transformer, its parameter count derived from its shape."""
    kv_heads = draw(st.integers(1, 16))
    heads = kv_heads * draw(st.integers(1, 8))
    head_dim = draw(st.sampled_from((64, 80, 96, 128, 256)))
    hidden = heads * head_dim
    intermediate = draw(st.integers(hidden, 4 * hidden))
    layers = draw(st.integers(1, 128))
    vocab = draw(st.integers(1000, 262144))
    tied = draw(st.booleans())
    experts = draw(st.sampled_from((1, 1, 8, 16)))
    embedding = vocab * hidden * (1 if tied else 2)
    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim
    mlp = 3 * hidden * intermediate
    return ModelFacts(
        name="custom",
        layers=layers,
        hidden_size=hidden,
        attention_heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=intermediate,
        vocab_size=vocab,
        max_context_length=131072,
        total_parameters=embedding + layers * (attention + experts * mlp),
        active_parameters=embedding + layers * (attention + mlp),
        experts=experts,
        tied_embeddings=tied,
    )


models = st.one_of(st.sampled_from(list(CATALOG.values())), random_models())


@st.composite
def placements(draw: st.DrawFn) -> tuple[ServingEngine, Shape, int | None]:
    """An engine and a layout of one replica: GPUs per node x nodes on a default card, or CPU for llama.cpp."""
    engine = draw(st.sampled_from(ENGINES))
    if engine == "llamacpp" and draw(st.booleans()):
        return engine, Shape(0), None
    nodes = draw(st.integers(1, 4)) if engine == "vllm" else 1
    return engine, Shape(draw(st.sampled_from(TENSOR_PARALLEL)), nodes), draw(st.sampled_from(CARD_BYTES))


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def expected_weights_per_gpu(model: ModelFacts, quantization: str, engine: ServingEngine, shape: Shape) -> Fraction:
    quant = QUANTIZATIONS[quantization]
    one_table = model.vocab_size * model.hidden_size
    embedding_params = one_table if model.tied_embeddings else 2 * one_table
    bits = Fraction(quant.bits_per_weight)
    embedding_bits = Fraction(16) if quant.embeddings_in_bf16 else bits
    total_bits = (model.total_parameters - embedding_params) * bits + embedding_params * embedding_bits
    if engine == "llamacpp" and shape.gpus > 0 and not model.tied_embeddings:
        total_bits -= one_table * embedding_bits  # llama.cpp keeps token_embd on the host
    return total_bits / 8 / max(shape.gpus, 1)


def expected_kv_heads_per_gpu(model: ModelFacts, engine: ServingEngine, shape: Shape) -> int:
    tensor_parallel = shape.gpus_per_node
    if engine == "llamacpp" or tensor_parallel <= 1:
        return model.kv_heads
    if tensor_parallel > model.kv_heads:
        return 1  # each rank holds a replica of one KV head
    return model.kv_heads // tensor_parallel


def expected_kv_bytes_per_gpu(work: Workload, engine: ServingEngine, shape: Shape) -> int:
    model = work.model
    stages = max(shape.gpus, 1) if engine == "llamacpp" else shape.nodes
    layers = _ceil_div(model.layers, stages)  # the most loaded stage
    heads = expected_kv_heads_per_gpu(model, engine, shape)
    return 2 * layers * heads * model.head_dim * work.kv_dtype_bytes * work.context_length * work.max_sequences


def _total(work: Workload, engine: ServingEngine, shape: Shape, card: int | None) -> int:
    return estimate(work, engine, shape, card).total


# (a) context and concurrency


@PROPERTY
@given(
    model=models,
    quantization=quantizations,
    placement=placements(),
    context_pair=st.tuples(contexts, contexts).map(sorted),
    sequence_pair=st.tuples(sequences, sequences).map(sorted),
    kv_bytes=st.sampled_from((1, 2)),
    adapters=st.integers(0, 4),
)
def test_longer_context_or_more_sequences_never_needs_less_memory(
    *,
    model: ModelFacts,
    quantization: str,
    placement: tuple[ServingEngine, Shape, int | None],
    context_pair: list[int],
    sequence_pair: list[int],
    kv_bytes: int,
    adapters: int,
) -> None:
    engine, shape, card = placement
    (short, long), (few, many) = context_pair, sequence_pair

    def work(context: int, sequences: int) -> Workload:
        return Workload(model, quantization, context, sequences, kv_dtype_bytes=kv_bytes, adapters=adapters)

    base = estimate(work(short, few), engine, shape, card)
    for context, count in ((long, few), (short, many), (long, many)):
        bigger = estimate(work(context, count), engine, shape, card)
        assert bigger.total >= base.total, (context, count)
        assert bigger.kv_cache >= base.kv_cache
        assert bigger.overhead >= base.overhead
        assert bigger.weights == base.weights


# (b) bits per weight


@PROPERTY
@given(
    model=models,
    placement=placements(),
    context=contexts,
    sequence_count=sequences,
    bf16_embeddings=st.booleans(),
)
def test_more_bits_per_weight_never_needs_less_memory(
    model: ModelFacts,
    placement: tuple[ServingEngine, Shape, int | None],
    context: int,
    sequence_count: int,
    bf16_embeddings: bool,
) -> None:
    engine, shape, card = placement
    family = [q for q in QUANTIZATIONS.values() if q.embeddings_in_bf16 == bf16_embeddings]
    totals = {q.name: _total(Workload(model, q.name, context, sequence_count), engine, shape, card) for q in family}
    for low in family:
        for high in family:
            if low.bits_per_weight < high.bits_per_weight:
                assert totals[low.name] <= totals[high.name], (low.name, high.name)
            elif low.bits_per_weight == high.bits_per_weight:
                assert totals[low.name] == totals[high.name], (low.name, high.name)


@PROPERTY
@given(model=models)
def test_weight_bytes_grow_with_the_bits_of_every_tensor(model: ModelFacts) -> None:
    """Across all formats: more bits for the body and no fewer for the embeddings never gives smaller weights.

    Nominal bits alone do not order formats of different families: an fp8 checkpoint keeps 16-bit
    embeddings, so a small model's fp8 file can outweigh its 8.5-bit Q8_0 GGUF.
    """

    def embedding_bits(name: str) -> float:
        quant = QUANTIZATIONS[name]
        return 16.0 if quant.embeddings_in_bf16 else quant.bits_per_weight

    sizes = {name: weight_bytes(model, name) for name in QUANTIZATIONS}
    for low in QUANTIZATIONS:
        for high in QUANTIZATIONS:
            body_more = QUANTIZATIONS[low].bits_per_weight <= QUANTIZATIONS[high].bits_per_weight
            if body_more and embedding_bits(low) <= embedding_bits(high):
                assert sizes[low] <= sizes[high], (low, high)
    assert sizes["q2_k"] < sizes["q4_k_m"] < sizes["q8_0"] < sizes["f16"]
    assert sizes["awq"] < sizes["fp8"] < sizes["bf16"]


# (c) a fitting plan fits by the model's own arithmetic


@st.composite
def sizing_requests(draw: st.DrawFn) -> SizingRequest:
    engine = draw(st.sampled_from(ENGINES))
    quantization = draw(quantizations)
    work = Workload(
        draw(models),
        quantization,
        draw(contexts),
        draw(sequences),
        kv_dtype_bytes=draw(st.sampled_from((1, 2))),
    )
    gguf = not QUANTIZATIONS[quantization].embeddings_in_bf16
    if engine == "llamacpp" and draw(st.booleans()):
        return SizingRequest(work, engine, cpu_only=True, gguf=gguf)
    return SizingRequest(
        work,
        engine,
        gpu_class=draw(st.sampled_from(("auto", "auto", *(c.name for c in DEFAULT_GPU_CLASSES)))),
        gpu_count=draw(st.one_of(st.none(), st.sampled_from((1, 2, 4, 8, 16)))),
        max_nodes=draw(st.integers(1, 3)),
        gguf=gguf,
    )


def _check_arithmetic(request: SizingRequest, candidate: Candidate) -> None:
    work, engine, shape, memory = request.work, request.engine, candidate.shape, candidate.memory
    weights = expected_weights_per_gpu(work.model, work.quantization, engine, shape)
    assert abs(memory.weights - weights) <= 2, (candidate.label, memory.weights, float(weights))
    assert memory.kv_cache == expected_kv_bytes_per_gpu(work, engine, shape), candidate.label
    assert memory.overhead == sum(memory.overhead_parts.values())
    if candidate.gpu_class is None:
        assert DEFAULT_INVENTORY.cpu is not None
        assert memory.budget == int(DEFAULT_INVENTORY.cpu.memory_bytes * USABLE_FRACTION["cpu"])
        assert memory.host_bytes >= memory.total, "the pod must request what the replica needs"
    else:
        assert memory.budget == int(candidate.gpu_class.memory_bytes * USABLE_FRACTION[engine])
        assert memory.overhead >= 256 * 1024**2, "a GPU process needs at least its CUDA context"
    if memory.fits:
        assert weights + memory.kv_cache + memory.overhead <= memory.budget + 2


def _check_engine_can_shard(request: SizingRequest, candidate: Candidate) -> None:
    """vLLM and TGI split attention heads and KV heads evenly; vLLM replicates KV heads when TP exceeds them."""
    model, tensor_parallel = request.work.model, candidate.shape.gpus_per_node
    if request.engine == "llamacpp" or candidate.gpu_class is None:
        return
    assert model.attention_heads % tensor_parallel == 0, candidate.label
    splits = model.kv_heads % tensor_parallel == 0
    replicates = request.engine == "vllm" and tensor_parallel % model.kv_heads == 0
    assert splits or replicates, (candidate.label, model.kv_heads)


@PROPERTY
@given(request=sizing_requests())
def test_every_fitting_plan_fits_by_the_models_own_arithmetic(request: SizingRequest) -> None:
    tried = candidates(request, DEFAULT_INVENTORY)
    for candidate in tried:
        _check_arithmetic(request, candidate)
        _check_engine_can_shard(request, candidate)
        if request.gpu_count is not None:
            assert candidate.shape.gpus == request.gpu_count
        if request.gpu_class != "auto":
            assert candidate.gpu_class is not None
            assert candidate.gpu_class.name == request.gpu_class
        assert candidate.shape.nodes <= request.max_nodes
    decision = decide(request, DEFAULT_INVENTORY)
    fitting = [c for c in tried if c.memory.fits]
    assert decision.fits == bool(fitting)
    event("fits" if fitting else "refused")
    if decision.chosen is None:
        assert engine_args(decision) == ()
        assert decision.reason
        return
    assert decision.chosen.memory.fits
    assert all(decision.chosen.cost <= other.cost for other in fitting)
    flags = dict(zip(engine_args(decision)[::2], engine_args(decision)[1::2], strict=True))
    shape, work = decision.chosen.shape, request.work
    if request.engine == "vllm":
        assert flags["--tensor-parallel-size"] == str(shape.gpus_per_node)
        assert flags["--pipeline-parallel-size"] == str(shape.nodes)
        assert flags["--max-model-len"] == str(work.context_length)
        assert flags["--max-num-seqs"] == str(work.max_sequences)
        assert decision.chosen.gpu_class is not None
        utilization = float(flags["--gpu-memory-utilization"])
        assert decision.chosen.memory.budget == int(decision.chosen.gpu_class.memory_bytes * utilization)
    elif request.engine == "tgi":
        assert flags["--num-shard"] == str(shape.gpus_per_node)
        assert flags["--max-total-tokens"] == str(work.context_length)
        assert int(flags["--max-input-tokens"]) < int(flags["--max-total-tokens"])
        assert int(flags["--max-batch-prefill-tokens"]) >= int(flags["--max-input-tokens"])
    else:
        assert flags["--ctx-size"] == str(work.context_length * work.max_sequences)
        assert flags["--parallel"] == str(work.max_sequences)
        assert flags["--n-gpu-layers"] == ("0" if shape.gpus == 0 else str(work.model.layers + 1))


# (d) tensor parallelism


@PROPERTY
@given(
    model=models,
    quantization=quantizations,
    engine=st.sampled_from(ENGINES),
    context=contexts,
    sequence_count=sequences,
    card=st.sampled_from(CARD_BYTES),
    nodes=st.integers(1, 4),
)
def test_more_tensor_parallel_gpus_never_increase_per_gpu_weights_or_kv(
    *,
    model: ModelFacts,
    quantization: str,
    engine: ServingEngine,
    context: int,
    sequence_count: int,
    card: int,
    nodes: int,
) -> None:
    work = Workload(model, quantization, context, sequence_count)
    node_count = nodes if engine == "vllm" else 1
    estimates = [estimate(work, engine, Shape(tp, node_count), card) for tp in TENSOR_PARALLEL]
    for fewer, more in pairwise(estimates):
        assert more.weights <= fewer.weights
        assert more.kv_cache <= fewer.kv_cache
    assert estimates[-1].weights < estimates[0].weights


@PROPERTY
@given(context=st.integers(256, 1_048_576))
def test_tgi_token_flags_are_consistent_for_any_context(context: int) -> None:
    work = Workload(CATALOG["llama-3.1-8b"], "bf16", context, 1)
    args = engine_sizing_args("tgi", work, Shape(8))
    flags = dict(zip(args[::2], args[1::2], strict=True))
    assert 0 < int(flags["--max-input-tokens"]) < int(flags["--max-total-tokens"]) == context
    assert int(flags["--max-batch-prefill-tokens"]) >= int(flags["--max-input-tokens"])
