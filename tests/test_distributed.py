"""Data parallelism: ``MultiObjectiveOptimizer`` across two gloo ranks on CPU.

Two spawned processes run every scenario of tests/distributed_worker.py once (one fixture for
the module); each test then checks one scenario against what this process computes alone,
without torch.distributed: each shard's per-objective gradients, averaged by hand (zero where a
shard's objective does not reach a parameter), handed to :func:`conflict_opt.aggregate_`, then
the inner optimizer's step. Replicas must be identical bit for bit, and equal to that reference.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from typing import Any

import pytest
import torch
import torch.distributed as dist

import conflict_opt

from . import distributed_worker as worker
from .distributed_worker import STEPS, WEIGHTS, Net, shard_losses

WORLD = 2
pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo"
)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Each rank's ``{scenario: result}``."""
    out = tmp_path_factory.mktemp("distributed")
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=worker.run, args=(rank, WORLD, str(out / "init"), str(out)), daemon=True)
        for rank in range(WORLD)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    alive = [rank for rank, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert not alive, f"ranks {alive} still running after 300 s (a collective hung)"
    codes = [p.exitcode for p in procs]
    assert codes == [0] * WORLD, f"rank exit codes {codes}"
    return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD)]


@pytest.fixture(params=list(worker.SCHEMES))
def scheme(request: pytest.FixtureRequest) -> str:
    """The store mode's scheme across ranks: all-reduce, or sharded."""
    return request.param


def scenario(ranks: list[dict[str, Any]], scheme: str, name: str) -> list[dict[str, Any]]:
    results = [r[f"{scheme}/{name}"] for r in ranks]
    for rank, result in enumerate(results):
        assert "exception" not in result, f"rank {rank}: {result['exception']}\n{result['trace']}"
    return results


# ---------------------------------------------------------------------------- the reference
Grads = list[list[torch.Tensor | None]]


def local_grads(net: Net, step: int, shard: int, micro: int) -> Grads:
    params = list(net.parameters())
    losses = shard_losses(net, net, step, shard, micro)
    return [
        list(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True))
        for loss in losses
    ]


def summed(parts: Sequence[Grads]) -> Grads:
    """Elementwise sum of gradient lists, None-aware (None + x = x)."""
    out = [list(row) for row in parts[0]]
    for part in parts[1:]:
        for i, row in enumerate(part):
            for t, x in enumerate(row):
                if x is not None:
                    out[i][t] = x if out[i][t] is None else out[i][t] + x
    return out


def averaged(per_shard: Sequence[Grads]) -> Grads:
    """The mean over shards as the ranks form it: each divided by the count, then summed in
    rank order; a shard without a gradient contributes zero, a slot none reaches stays None."""
    n = len(per_shard)
    return summed([[[None if x is None else x / n for x in row] for row in g] for g in per_shard])


def reference(
    shards: Sequence[int] = (0, 1),
    *,
    optimizer: str = "sgd",
    micro_batches: int = 1,
    per_micro_batch: bool = False,
    store_dtype: torch.dtype | None = None,
    double: bool = False,
    whole_double: bool = False,
) -> Net:
    net = Net(double=double)
    if whole_double:
        net = net.double()
    params = list(net.parameters())
    if optimizer == "sgd":
        inner = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    else:
        inner = torch.optim.Adam(params, lr=0.01)
    for step in range(STEPS):
        inner.zero_grad()
        if per_micro_batch:
            for m in range(micro_batches):
                g = averaged([local_grads(net, step, r, m) for r in shards])
                conflict_opt.aggregate_(params, g, WEIGHTS, accumulate=True)
        else:
            per_shard = [
                summed([local_grads(net, step, r, m) for m in range(micro_batches)]) for r in shards
            ]
            if store_dtype is not None:
                per_shard = [
                    [[None if x is None else x.to(store_dtype) for x in row] for row in g]
                    for g in per_shard
                ]
            conflict_opt.aggregate_(params, averaged(per_shard), WEIGHTS)
        inner.step()
    return net


def assert_replicas_equal(results: list[dict[str, Any]]) -> None:
    first = results[0]["params"]
    for rank, result in enumerate(results[1:], 1):
        for name, value in result["params"].items():
            assert torch.equal(value, first[name]), f"rank {rank} differs from rank 0 at {name}"


def assert_matches(params: dict[str, torch.Tensor], net: Net, atol: float) -> None:
    for name, p in net.named_parameters():
        torch.testing.assert_close(params[name], p.detach(), rtol=0, atol=atol, msg=name)


# ---------------------------------------------------------------------------- the scenarios
@pytest.mark.parametrize(
    ("name", "kwargs", "atol"),
    [
        ("store", {}, 1e-6),
        ("store_adam", {"optimizer": "adam"}, 1e-6),
        ("accumulate", {"micro_batches": 2}, 1e-6),
        ("per_micro_batch", {"micro_batches": 2, "per_micro_batch": True}, 1e-6),
        # The Gram by polarisation of averaged gradient norms: equal up to its rounding.
        ("gram_first", {"micro_batches": 2, "per_micro_batch": True}, 1e-5),
        ("ddp", {}, 1e-6),
        ("ddp_gram_first", {"per_micro_batch": True}, 1e-5),
        ("reference_backend", {}, 1e-6),
        ("two_dtypes", {"double": True}, 1e-6),
        # Scaled by a power of two, unscaled by GradScaler: the same step.
        ("scaler", {}, 1e-6),
        # bfloat16 store: each shard's gradients rounded to 8 bits of mantissa, then averaged.
        ("bf16", {"store_dtype": torch.bfloat16}, 1e-5),
    ],
)
def test_replicas_identical_and_equal_to_the_averaged_reference(
    ranks: list[dict[str, Any]], scheme: str, name: str, kwargs: dict[str, Any], atol: float
) -> None:
    results = scenario(ranks, scheme, name)
    assert_replicas_equal(results)
    assert_matches(results[0]["params"], reference(**kwargs), atol)
    for result in results:
        held, needed = result["grad_bytes"]
        # Fresh tensors (all-reduce), or views of the gathered buffers padded to a multiple of
        # W (sharded): never views of the K buffers of the per-objective gradients.
        assert needed <= held < needed + 8 * WORLD, f".grad keeps {held} bytes for {needed}"
        assert result["world_size"] == WORLD and result["is_world"]
        assert result["sharded"] == (scheme == "sharded")
        assert f"world_size={WORLD}" in result["repr"]


def test_unreached_on_one_rank_counts_as_zero_and_unreached_everywhere_stays_none(
    ranks: list[dict[str, Any]],
    scheme: str,
) -> None:
    results = scenario(ranks, scheme, "store")
    ref = reference()
    for result in results:
        grads = result["grads"]
        # `extra`: objective 1 reaches it on rank 0 only; its gradient is rank 0's / 2.
        torch.testing.assert_close(grads["extra"], ref.extra.grad, rtol=1e-6, atol=1e-8)
        assert grads["extra"].abs().sum() > 0
        assert grads["unused"] is None
        assert grads["empty"] is not None and grads["empty"].shape == (0,)


def test_diagnostics_are_the_same_on_every_rank(ranks: list[dict[str, Any]], scheme: str) -> None:
    results = scenario(ranks, scheme, "store")
    for key in ("coeffs", "gram"):
        assert torch.equal(results[0][key], results[1][key]), key
    # The Gram of the averaged gradients, not of either rank's own.
    net = Net()  # the reference run again, keeping the last step's Gram
    params = list(net.parameters())
    inner = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    for step in range(STEPS):
        inner.zero_grad()
        g = averaged([local_grads(net, step, r, 0) for r in range(WORLD)])
        agg = conflict_opt.aggregate_(params, g, WEIGHTS)
        inner.step()
    torch.testing.assert_close(results[0]["gram"], agg.gram, rtol=1e-6, atol=1e-9)


def test_a_nan_loss_on_one_rank_raises_on_every_rank_with_nothing_written(
    ranks: list[dict[str, Any]],
    scheme: str,
) -> None:
    results = scenario(ranks, scheme, "nan")
    for result in results:
        assert result["error"] is not None
        assert "non-finite loss on 1 of 2 ranks (ranks 1; " in result["error"], result["error"]
        assert result["untouched"]
    assert "nan" in results[1]["error"]  # rank 1 names its own losses
    assert_replicas_equal(results)  # and both went on training together


def test_ranks_that_disagree_on_the_parameters_all_raise(
    ranks: list[dict[str, Any]], scheme: str
) -> None:
    results = scenario(ranks, scheme, "mismatch")
    for result in results:
        assert result["error"] is not None and "disagree" in result["error"]
        assert "trainable parameters: 12..13, trainable values: 278..283" in result["error"], (
            result["error"]
        )


@pytest.mark.parametrize("name", ["k_mismatch", "k_mismatch_gram_first"])
def test_ranks_that_disagree_on_the_number_of_losses_all_raise(
    ranks: list[dict[str, Any]], scheme: str, name: str
) -> None:
    for result in scenario(ranks, scheme, name):
        assert result["error"] is not None and "losses: 2..3" in result["error"], result["error"]


@pytest.mark.parametrize(
    "name", ["uneven", "uneven_unchecked", "uneven_per_micro_batch", "uneven_gram_first"]
)
def test_a_rank_with_one_more_micro_batch_raises_on_every_rank_before_any_step(
    ranks: list[dict[str, Any]], scheme: str, name: str
) -> None:
    """Collectives pair up by their order alone: without the check, rank 0's second backward
    met rank 1's step (or its next step's first backward), and the ranks summed unrelated
    buffers or hung (measured before the check: rank 1 trained on through both steps in the
    per-micro-batch and Gram-first modes; store mode hung with check_finite and went on
    silently without it)."""
    results = scenario(ranks, scheme, name)
    for rank, result in enumerate(results):
        assert result["error"] is not None, result
        assert "(call: backward..step, micro-batch: 1..2; this rank: " in result["error"]
        where = "backward() of micro-batch 2" if rank == 0 else "step() after 1 micro-batch,"
        assert where in result["error"], result["error"]
        assert result["untouched"]
    assert_replicas_equal(results)


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("weights_differ", ["c=0.4, weights=[0.5, 0.3, 0.2]", "c=0.2, weights=[0.2, 0.3, 0.5]"]),
        ("mode_differs", ["mode='store', accumulation='per_step'"] * 2),
    ],
)
def test_ranks_with_other_options_or_weights_all_raise_before_any_pass(
    ranks: list[dict[str, Any]], scheme: str, name: str, shown: list[str]
) -> None:
    results = scenario(ranks, scheme, name)
    for result in results:
        assert result["error"] is not None, name
        assert "options that differ, this rank's: " in result["error"], result["error"]
        assert "losses:" not in result["error"] and "call:" not in result["error"]
        assert result["untouched"]
    assert shown[0] in results[0]["error"], results[0]["error"]
    if name == "weights_differ":
        assert shown[1] in results[1]["error"], results[1]["error"]
    else:
        assert "mode='gram_first', accumulation='per_micro_batch'" in results[1]["error"]


@pytest.mark.parametrize("name", ["uneven_later", "uneven_later_gram_first"])
def test_micro_batches_are_counted_within_each_step(
    ranks: list[dict[str, Any]], scheme: str, name: str
) -> None:
    """After a full step of two micro-batches on both ranks, rank 0's third micro-batch of the
    next step meets rank 1's step: both raise, naming where each is within that step (not
    counting the earlier step's micro-batches), and train on together after zero_grad."""
    results = scenario(ranks, scheme, name)
    for rank, result in enumerate(results):
        error = result["error"]
        assert error is not None, result
        assert "(call: backward..step, micro-batch: 2..3; this rank: " in error, error
        where = "backward() of micro-batch 3" if rank == 0 else "step() after 2 micro-batches,"
        assert where in error, error
        assert result["untouched"]
    assert_replicas_equal(results)


@pytest.mark.parametrize(
    ("name", "option"),
    [
        ("method_differs", "method"),
        ("backend_differs", "backend"),
        ("primitive_backend_differs", "primitive_backend"),
        ("store_dtype_differs", "store_dtype"),
        # Where the Gram is non-finite one rank would skip the step and the other take it.
        ("check_finite_differs", "check_finite"),
    ],
)
def test_ranks_that_differ_in_any_one_option_all_raise_naming_it(
    ranks: list[dict[str, Any]], scheme: str, name: str, option: str
) -> None:
    """Every option decides the step (the problem solved, how, or from what gradients): ranks
    that differ in any one of them would drift apart, so every rank raises, naming it."""
    for result in scenario(ranks, scheme, name):
        assert result["error"] is not None, name
        assert "options that differ, this rank's: " in result["error"], result["error"]
        assert f"{option}=" in result["error"].split("options that differ")[1], result["error"]
        assert result["untouched"]


@pytest.mark.parametrize(
    ("name", "kwargs", "atol"),
    [
        ("freeze_after_backward", {}, 1e-6),
        ("freeze_after_backward_per_micro_batch", {"per_micro_batch": True}, 1e-6),
        ("freeze_after_backward_gram_first", {"per_micro_batch": True}, 1e-5),
    ],
)
def test_a_parameter_frozen_between_backward_and_step_on_one_rank_still_takes_that_step(
    ranks: list[dict[str, Any]], scheme: str, name: str, kwargs: dict[str, Any], atol: float
) -> None:
    """The step is taken with what backward gathered (as in plain torch, which reads
    requires_grad at backward): a parameter frozen after it on one rank changes nothing, in
    any mode; the replicas stay identical and equal to the averaged reference."""
    results = scenario(ranks, scheme, name)
    assert_replicas_equal(results)
    assert_matches(results[0]["params"], reference(**kwargs), atol)


def test_uniform_weights_given_as_none_or_as_values_agree(
    ranks: list[dict[str, Any]], scheme: str
) -> None:
    """None means 1/K each: a rank with None and one with explicit 1/3s solve the same problem
    and train together, while 0.5/0.3/0.2 against None is refused, showing the 1/3s."""
    results = scenario(ranks, scheme, "uniform_weights")
    assert [result["error"] for result in results] == [None, None]
    assert not results[0]["untouched"]
    assert_replicas_equal(results)
    results = scenario(ranks, scheme, "weights_none")
    for result in results:
        assert result["error"] is not None and "weights=" in result["error"], result
    thirds = "weights=[0.3333333333333333, 0.3333333333333333, 0.3333333333333333]"
    assert thirds in results[1]["error"], results[1]["error"]


def test_aggregate_with_a_process_group_averages_each_objective_before_the_gram(
    ranks: list[dict[str, Any]], scheme: str
) -> None:
    """The function, handed each rank's local gradients and the group, takes the steps that
    the reference takes with gradients averaged by hand, on both ranks alike."""
    results = scenario(ranks, scheme, "functional")
    assert [result["error"] for result in results] == [None, None]
    assert_replicas_equal(results)
    assert_matches(results[0]["params"], reference(), 1e-6)
    torch.testing.assert_close(results[0]["gram"], results[1]["gram"], rtol=0, atol=0)


def test_aggregate_without_a_process_group_communicates_nothing(
    ranks: list[dict[str, Any]], scheme: str
) -> None:
    """The default stays local with torch.distributed initialised: gradients the caller
    averaged are not averaged again."""
    for rank, result in enumerate(scenario(ranks, scheme, "functional_local")):
        assert_matches(result["params"], reference(shards=(rank,)), 1e-6)


def test_aggregate_with_a_process_group_refuses_other_weights_on_every_rank(
    ranks: list[dict[str, Any]], scheme: str
) -> None:
    for result in scenario(ranks, scheme, "functional_weights_differ"):
        assert result["error"] is not None, result
        assert "options that differ, this rank's: weights=" in result["error"], result["error"]
        assert "this rank: aggregate_()" in result["error"], result["error"]
        assert result["untouched"]


def test_aggregate_with_a_process_group_takes_the_wrappers_steps_bit_for_bit(
    ranks: list[dict[str, Any]], scheme: str
) -> None:
    """The function with the group and the wrapper run the same scheme (all-reduce, or
    sharded where the backend takes it): the same steps to the last bit."""
    functional = scenario(ranks, scheme, "functional")
    wrapper = scenario(ranks, scheme, "store")
    for rank in range(WORLD):
        for name, value in wrapper[rank]["params"].items():
            assert torch.equal(functional[rank]["params"][name], value), (rank, name)


def test_aggregate_with_a_process_group_agrees_on_none_and_uniform_weights(
    ranks: list[dict[str, Any]], scheme: str
) -> None:
    """None means 1/K each for the function too: a rank with None and one with explicit 1/3s
    solve the same problem and take the same steps."""
    results = scenario(ranks, scheme, "functional_uniform_weights")
    assert [result["error"] for result in results] == [None, None]
    assert_replicas_equal(results)


@pytest.mark.parametrize(("name", "option"), [("method_differs", "method"), ("c_differs", "c")])
def test_aggregate_with_a_process_group_refuses_other_options_on_every_rank(
    ranks: list[dict[str, Any]], scheme: str, name: str, option: str
) -> None:
    """A rank with another method or c would solve another problem: every rank raises,
    naming it, with nothing written."""
    for result in scenario(ranks, scheme, f"functional_{name}"):
        assert result["error"] is not None, result
        assert f"options that differ, this rank's: {option}=" in result["error"], result["error"]
        assert result["untouched"]


def test_aggregate_with_a_process_group_averages_float64_in_float64(
    ranks: list[dict[str, Any]], scheme: str
) -> None:
    """A float64 model's gradients are averaged in float64: the steps equal the hand-averaged
    float64 reference to float64 rounding, far below float32's."""
    results = scenario(ranks, scheme, "functional_double")
    assert [result["error"] for result in results] == [None, None]
    assert_replicas_equal(results)
    assert_matches(results[0]["params"], reference(whole_double=True), 1e-12)


def test_aggregate_with_a_process_group_raises_for_an_invalid_option_on_every_rank(
    ranks: list[dict[str, Any]], scheme: str
) -> None:
    """The same invalid option on every rank: the error of one process, on every rank, with
    nothing written, in either scheme."""
    for result in scenario(ranks, scheme, "functional_invalid"):
        assert result["error"] is not None and "`c` must be" in result["error"], result
        assert result["untouched"]


def test_aggregate_with_a_process_group_refuses_sharded_parameters_on_every_rank(
    ranks: list[dict[str, Any]], scheme: str
) -> None:
    """A parameter sharded across the ranks (a DTensor) passed to the function: every rank
    raises, naming it, with nothing written."""
    for result in scenario(ranks, scheme, "functional_dtensor"):
        assert result["error"] is not None and "DTensor" in result["error"], result
        assert "sharded across ranks" in result["error"]
        assert result["untouched"]


def test_sharded_parameters_are_refused_on_every_rank(
    ranks: list[dict[str, Any]], scheme: str
) -> None:
    for result in scenario(ranks, scheme, "dtensor"):
        assert result["error"] is not None and "DTensor" in result["error"], result["error"]
        assert "sharded across ranks" in result["error"]


@pytest.mark.parametrize(
    ("name", "kind"),
    [("fsdp1", "FSDP1's FlatParameter"), ("fsdp1_orig_params", "use_orig_params=True")],
)
def test_fsdp1_parameters_are_refused_on_every_rank_before_any_pass(
    ranks: list[dict[str, Any]], scheme: str, name: str, kind: str
) -> None:
    for result in scenario(ranks, scheme, name):
        assert result["error"] is not None and kind in result["error"], result["error"]
        assert "sharded across ranks" in result["error"]
        assert result["untouched"]


def test_closure_values_and_replicas_agree(ranks: list[dict[str, Any]], scheme: str) -> None:
    results = scenario(ranks, scheme, "closure")
    assert_replicas_equal(results)
    assert results[0]["values"] == results[1]["values"]
    # The first step's value is its first evaluation: Σ_k w_k L_k at the initial parameters,
    # averaged over the shards as the gradients are (not summed).
    net = Net()
    with torch.no_grad():
        shards = [shard_losses(net, net, 0, r) for r in range(WORLD)]
    values = [sum(w * float(x) for w, x in zip(WEIGHTS, ls, strict=True)) for ls in shards]
    assert results[0]["values"][0] == pytest.approx(sum(values) / WORLD, rel=1e-12)


def test_a_group_of_one_rank_trains_each_rank_on_its_own_shard(
    ranks: list[dict[str, Any]],
    scheme: str,
) -> None:
    results = scenario(ranks, scheme, "local_group")
    for rank, result in enumerate(results):
        assert result["world_size"] == 1 and "world_size" not in result["repr"]
        assert_matches(result["params"], reference(shards=(rank,)), 1e-6)
    assert not torch.equal(results[0]["params"]["extra"], results[1]["params"]["extra"])


def test_a_wrapper_built_before_init_process_group_averages_from_its_first_backward_after_it(
    ranks: list[dict[str, Any]], scheme: str
) -> None:
    results = scenario(ranks, scheme, "late_init")
    assert_replicas_equal(results)
    assert_matches(results[0]["params"], reference(), 1e-6)
    for result in results:
        assert result["before"] == 1 and result["world_size"] == WORLD
        assert result["sharded"] == (scheme == "sharded")


# ------------------------------------------------------------------- single process, no spawn
def test_single_process_has_no_group() -> None:
    assert not dist.is_initialized()
    opt = conflict_opt.MultiObjectiveOptimizer(torch.optim.SGD(Net().parameters(), lr=0.1))
    assert opt.process_group is None and opt.world_size == 1


@pytest.mark.parametrize("bad", ["world", 2, object()])
def test_process_group_must_be_a_process_group(bad: Any) -> None:
    with pytest.raises(ValueError, match=f"got {type(bad).__name__}"):
        conflict_opt.MultiObjectiveOptimizer(
            torch.optim.SGD(Net().parameters(), lr=0.1), process_group=bad
        )
    w = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match=f"got {type(bad).__name__}"):
        conflict_opt.aggregate_([w], [[torch.ones(2)]], process_group=bad)
    assert w.grad is None


def _agree_across(
    monkeypatch: pytest.MonkeyPatch, calls: list[dict[str, Any]]
) -> list[list[int] | str]:
    """:func:`_distributed.agree` as each of W simulated ranks would see it: the collective is
    replaced by the elementwise maximum over every rank's signature (what MAX all-reduce
    computes), so the encoding of W ranks is checked in one process. Returns each rank's list of
    non-finite ranks, or its error message."""
    from conflict_opt import _distributed

    world = len(calls)
    sigs: list[torch.Tensor] = []
    rank_now = [0]
    monkeypatch.setattr(_distributed.dist, "get_world_size", lambda group: world)
    monkeypatch.setattr(_distributed.dist, "get_rank", lambda group: rank_now[0])

    def record(tensor: torch.Tensor, op: Any, group: Any) -> None:
        sigs.append(tensor.clone())

    def reduce(tensor: torch.Tensor, op: Any, group: Any) -> None:
        tensor.copy_(torch.stack(sigs).amax(0))

    params = [torch.zeros(3), torch.zeros(2, 2)]
    for collective in (record, reduce):
        monkeypatch.setattr(_distributed.dist, "all_reduce", collective)
        outcomes: list[list[int] | str] = []
        for rank, call in enumerate(calls):
            rank_now[0] = rank
            options = {"params": params, "k": 3, "call": "backward", "micro_batch": 1, **call}
            try:
                outcomes.append(
                    _distributed.agree(
                        options.pop("params"),
                        options.pop("k"),
                        None,
                        torch.device("cpu"),
                        **options,
                    )
                )
            except ValueError as err:
                outcomes.append(str(err))
    return outcomes


def test_agree_reports_exactly_the_ranks_with_a_nonfinite_loss(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = [{}, {"finite": False}, {}, {"finite": False}]
    assert _agree_across(monkeypatch, calls) == [[1, 3]] * 4
    assert _agree_across(monkeypatch, [{}] * 3) == [[]] * 3


@pytest.mark.parametrize(
    ("changed", "shown"),
    [
        ({"call": "step"}, "call: backward..step"),
        ({"micro_batch": 3}, "micro-batch: 1..3"),
        ({"k": 2}, "losses: 2..3"),
        (
            {"params": [torch.zeros(3)]},
            "trainable parameters: 1..2, trainable values: 3..7, float32 values: 3..7",
        ),
        (
            {"params": [torch.zeros(3, dtype=torch.float64), torch.zeros(2, 2)]},
            "float32 values: 4..7, float64 values: 0..3",
        ),
        ({"params": [torch.zeros(7), torch.zeros(0)]}, None),  # same counts, same values
    ],
)
def test_agree_names_the_spread_of_what_differs_on_every_rank(
    monkeypatch: pytest.MonkeyPatch, changed: dict[str, Any], shown: str | None
) -> None:
    outcomes = _agree_across(monkeypatch, [{}, {}, changed])
    if shown is None:
        assert outcomes == [[]] * 3
        return
    for outcome in outcomes:
        assert isinstance(outcome, str) and f"({shown}; this rank: " in outcome, outcome
        assert "options that differ" not in outcome


def test_agree_compares_settings_exactly_and_shows_each_rank_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = {"c": 0.4, "weights": [0.5, 0.3, 0.2]}
    nudged = {"c": 0.4, "weights": [0.5, 0.3, 0.2 + 2**-55]}  # one bit of the last weight
    outcomes = _agree_across(monkeypatch, [{"settings": base}, {"settings": nudged}])
    assert all(isinstance(o, str) for o in outcomes)
    assert "options that differ, this rank's: weights=[0.5, 0.3, 0.2]; " in outcomes[0]
    assert f"this rank's: weights={nudged['weights']!r}; " in outcomes[1]
    assert "c=" not in outcomes[0]
    assert _agree_across(monkeypatch, [{"settings": base}] * 2) == [[]] * 2


def test_agree_has_one_length_whoever_calls_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The wrapper sends its nine settings, aggregate_ six (the simulated collective stacks the
    signatures, which needs one length, as gloo does): the ranks disagree on the call and on
    the settings one of them does not use, instead of exchanging buffers of two sizes."""
    wrapper = {"method": "cagrad_clip", "mode": "store", "weights": [0.5, 0.5]}
    function = {"method": "cagrad_clip", "accumulate": False, "weights": [0.5, 0.5]}
    outcomes = _agree_across(
        monkeypatch,
        [{"settings": wrapper}, {"settings": function, "call": "aggregate_", "micro_batch": 0}],
    )
    for outcome in outcomes:
        assert isinstance(outcome, str), outcome
        assert "(call: backward..aggregate_, micro-batch: 0..1; options that differ" in outcome
    assert "this rank's: mode='store', accumulate not used; this rank: backward()" in outcomes[0]
    assert "this rank's: mode not used, accumulate=False; this rank: aggregate_()" in outcomes[1]
    [unknown] = _agree_across(monkeypatch, [{"settings": {"lr": 0.1}}])
    assert isinstance(unknown, str) and unknown.startswith("unknown settings ['lr']"), unknown


@pytest.mark.parametrize(
    ("name", "own"),
    [
        ("local_error", "loss 2 does not require grad"),
        ("local_error_gram_first", "loss 2 does not require grad"),
        ("local_error_fewer", "got 2 losses, but the earlier micro-batches of this step had 3"),
    ],
)
def test_a_check_that_fails_on_one_rank_raises_on_every_rank(
    ranks: list[dict[str, Any]], scheme: str, name: str, own: str
) -> None:
    """Before, rank 0 stayed in the handshake until rank 1's next backward met it (and both
    raised a confusing micro-batch error, one step late on rank 1), or until the timeout."""
    results = scenario(ranks, scheme, name)
    assert results[1]["error"] is not None and results[1]["error"].startswith(own), results[1]
    error = results[0]["error"]
    assert error is not None, results[0]
    assert "1 of 2 ranks raised in their own checks before their collectives" in error, error
    assert f"rank 1: ValueError: {own}" in error, error
    for result in results:
        assert result["untouched"]
    assert_replicas_equal(results)


def test_a_rank_in_aggregate_and_one_in_the_wrappers_backward_both_raise(
    ranks: list[dict[str, Any]], scheme: str
) -> None:
    """Before the handshake had one length, gloo aborted rank 0 (SIGABRT, a size mismatch)."""
    for result in scenario(ranks, scheme, "mixed_calls"):
        assert result["error"] is not None, result
        assert "call: backward..aggregate_" in result["error"], result["error"]
