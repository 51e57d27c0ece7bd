"""The derived-state cache: kept meshes and fits give the same predictions as fresh ones."""

from __future__ import annotations

import numpy as np
import pytest

from pis.profiles.store import write_profile
from pis.simulator.api import Simulator
from pis.simulator.cache import DerivedCache, decode, encode
from pis.simulator.interp import SEARCH_AT_MOST, LogInterpolator


def _predict(sim: Simulator):
    return sim.predict(method=["dense", "static-width", "dynamic-depth"], sparsity=[0.0, 0.3],
                       phase=["prefill", "decode"], batch=[1, 3, 24], seq_len=[100, 700], context=[300, 5000])


def test_second_process_reads_what_the_first_derived(tmp_path, monkeypatch, synthetic):
    monkeypatch.setenv("PIS_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "p.parquet"
    write_profile(synthetic.profile, path)
    first = Simulator(path)
    fresh = _predict(first)
    kept = sorted(p.name for p in first.cache.folder.iterdir())
    assert kept and any(n.startswith("mesh-gemm") for n in kept) and "inmodel.json" in kept
    again = Simulator(path)  # a new process would build exactly this
    assert again.estimator._models == {}
    np.testing.assert_allclose(_predict(again)["latency_ms"], fresh["latency_ms"], rtol=1e-12)
    monkeypatch.setenv("PIS_CACHE_DIR", "off")
    off = Simulator(path)
    assert off.cache is None
    np.testing.assert_allclose(_predict(off)["latency_ms"], fresh["latency_ms"], rtol=1e-12)


def test_another_profile_never_reads_this_ones_entries(tmp_path, monkeypatch, make_synthetic):
    monkeypatch.setenv("PIS_CACHE_DIR", str(tmp_path / "cache"))
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    write_profile(make_synthetic().profile, a)
    write_profile(make_synthetic(scale=2.0).profile, b)
    sa, sb = Simulator(a), Simulator(b)
    assert sa.cache.folder != sb.cache.folder
    ta = _predict(sa)["latency_ms"].to_numpy()
    tb = _predict(sb)["latency_ms"].to_numpy()
    np.testing.assert_allclose(tb, 2.0 * ta, rtol=1e-9)


def test_an_unwritable_cache_folder_is_no_cache(tmp_path, monkeypatch, synthetic):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("PIS_CACHE_DIR", str(blocker / "cache"))
    path = tmp_path / "p.parquet"
    write_profile(synthetic.profile, path)
    sim = Simulator(path)
    assert len(_predict(sim)) > 0
    assert not (blocker / "cache").exists()


def test_encode_round_trips_the_fitted_state():
    value = {("concat", (1, 2), "decode"): (np.array([0.5, -1e-300, 3.0]), (np.array([True, False]), 1.5)),
             "inf": float("inf"), "rows": [{"batch": 4, "factor": 1.0000000000000002}]}
    back = decode(__import__("json").loads(__import__("json").dumps(encode(value))))
    key = ("concat", (1, 2), "decode")
    np.testing.assert_array_equal(back[key][0], value[key][0])
    assert back[key][1][0].dtype == bool and back[key][1][1] == 1.5
    assert back["inf"] == float("inf") and back["rows"][0]["factor"] == 1.0000000000000002


@pytest.mark.parametrize("n", [1, SEARCH_AT_MOST, SEARCH_AT_MOST + 1, 500])
def test_a_kept_mesh_interpolates_as_the_fresh_triangulation(n):
    rng = np.random.default_rng(0)
    grid = np.array(np.meshgrid(np.log([1, 4, 16, 64, 256]), np.log([256, 1024, 4096]), np.log([64, 512, 4096])))
    feats = grid.reshape(3, -1).T
    values = np.sin(feats).sum(axis=1)
    fresh = LogInterpolator(feats, values)
    kept = LogInterpolator(feats, values, mesh=fresh.mesh)
    lo, hi = feats.min(axis=0), feats.max(axis=0)
    q = rng.uniform(lo - 0.3, hi + 0.3, size=(n, 3))
    q[: n // 3] = feats[rng.integers(0, len(feats), n // 3)]  # on measured points, edges and faces
    a, ina = fresh(q)
    b, inb = kept(q)
    np.testing.assert_array_equal(ina, inb)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    if n <= SEARCH_AT_MOST:
        assert kept._tri is None  # answered without scipy's triangulation
