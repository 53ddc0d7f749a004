"""pass@k / avg@k against the closed form, and their reduction across processes."""

import math
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cepo.rollout.pass_at_k import AvgAtK, PassAtK, pass_at_k, pass_at_k_batch


def closed_form(n: int, c: int, k: int) -> float:
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (5, 2, 1, 0.4),  # pass@1 = c / n
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (5, 0, 3, 0.0),  # nothing correct
        (5, 3, 3, 1.0),  # n - c = 2 < k: every 3-subset holds a correct sample
        (5, 5, 5, 1.0),
        (4, 1, 4, 1.0),  # k = n: one correct is enough
        (10, 1, 3, 0.3),  # 1 - C(9,3)/C(10,3) = 1 - 84/120
    ],
)
def test_pass_at_k_hand_cases(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)
    assert pass_at_k(n, c, k) == pytest.approx(closed_form(n, c, k), abs=1e-12)


def test_pass_at_k_matches_closed_form_everywhere():
    cases = [(n, c, k) for n in range(1, 13) for c in range(n + 1) for k in range(1, n + 1)]
    n, c, k_ = (torch.tensor(col) for col in zip(*cases))
    for k in range(1, 13):
        sel = k_ == k
        got = pass_at_k_batch(n[sel], c[sel], k)
        want = torch.tensor([closed_form(int(a), int(b), k) for a, b in zip(n[sel], c[sel])], dtype=torch.float64)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_pass_at_k_large_n_is_stable():
    # C(1000, 500) overflows a float; the product form does not.
    assert 0.0 < pass_at_k(1000, 1, 500) == pytest.approx(0.5)
    assert pass_at_k_batch(torch.tensor([1000]), torch.tensor([1]), 500).item() == pytest.approx(0.5)


@pytest.mark.parametrize("n, c, k", [(3, 1, 4), (3, 4, 1), (3, -1, 1), (3, 1, 0)])
def test_pass_at_k_rejects_bad_counts(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)
    with pytest.raises(ValueError):
        pass_at_k_batch(torch.tensor([n]), torch.tensor([c]), k)


def test_metrics_average_over_problems():
    n = torch.tensor([5, 5, 5, 5])
    c = torch.tensor([2, 0, 5, 3])
    p2 = PassAtK(2)
    p2.update(n, c)
    # problems: 0.7, 0, 1, 1 - C(2,2)/C(5,2) = 0.9
    assert p2.compute().item() == pytest.approx((0.7 + 0.0 + 1.0 + 0.9) / 4)
    avg = AvgAtK()
    avg.update(n, c)
    assert avg.compute().item() == pytest.approx(10 / 20)
    p1 = PassAtK(1)
    p1.update(n, c)
    assert p1.compute().item() == pytest.approx(avg.compute().item())  # pass@1 = avg@n


def test_empty_metrics_compute_zero():
    assert PassAtK(2).compute().item() == 0.0
    assert AvgAtK().compute().item() == 0.0


def _data():
    # Uneven halves with different per-problem sample counts: a mean of the two halves' means
    # would be wrong, the sum states are not.
    n = torch.tensor([4, 4, 4, 8, 8, 6, 6])
    c = torch.tensor([0, 1, 4, 2, 7, 3, 0])
    return n, c


def _expected(k: int) -> tuple[float, float]:
    n, c = _data()
    passk = sum(closed_form(int(a), int(b), k) for a, b in zip(n, c)) / len(n)
    return passk, float(c.sum() / n.sum())


@pytest.mark.parametrize("k", [1, 2, 4])
def test_merged_states_equal_one_pass(k):
    n, c = _data()
    full_p, full_a = PassAtK(k), AvgAtK()
    full_p.update(n, c)
    full_a.update(n, c)
    halves = []
    for part in (slice(0, 2), slice(2, None)):  # 2 problems vs 5
        p, a = PassAtK(k), AvgAtK()
        p.update(n[part], c[part])
        a.update(n[part], c[part])
        halves.append((p, a))
    (p0, a0), (p1, a1) = halves
    p0.merge_state(p1)
    a0.merge_state(a1)
    want_p, want_a = _expected(k)
    assert full_p.compute().item() == pytest.approx(want_p)
    assert p0.compute().item() == pytest.approx(want_p)
    assert full_a.compute().item() == pytest.approx(want_a)
    assert a0.compute().item() == pytest.approx(want_a)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out: mp.SimpleQueue) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        n, c = _data()
        part = slice(0, 2) if rank == 0 else slice(2, None)
        p, a = PassAtK(2), AvgAtK()
        p.update(n[part], c[part])
        a.update(n[part], c[part])
        out.put((rank, p.compute().item(), a.compute().item()))  # compute() syncs the states
    finally:
        dist.destroy_process_group()


def test_gloo_ddp_reduction():
    world = 2
    # fork: the workers inherit the imports (spawn re-imports torch in each, ~15 s on 2 cores).
    out = mp.get_context("fork").SimpleQueue()
    ctx = mp.start_processes(
        _ddp_worker, args=(world, _free_port(), out), nprocs=world, join=False, start_method="fork"
    )
    deadline = time.monotonic() + 60
    while not ctx.join(timeout=1):  # raises if a worker failed
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.terminate()
            pytest.fail("DDP workers did not finish in 60 s")
    results = {rank: (p, a) for rank, p, a in (out.get() for _ in range(world))}
    want = _expected(2)
    assert sorted(results) == list(range(world))
    for rank in range(world):
        assert results[rank] == pytest.approx(want)
