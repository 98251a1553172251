"""Pretrained downloads: loopback HTTP server only, never the internet."""

import hashlib
import http.server
import multiprocessing as mp
import os
import threading
from dataclasses import replace

import numpy as np
import pytest

import mindspore as ms

from mindcv.models import create_model, registry
from mindcv.models.pretrained import PretrainedCfg
from mindcv.utils.download import DownloadError, download_cached

WEIGHTS = "torchvision_mnasnet0.5.safetensors"


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    hits = None

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.hits.append(self.path)
        super().do_GET()


@pytest.fixture
def server(fixtures_dir):
    hits = []
    handler = type("H", (_CountingHandler,), {"hits": hits})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: handler(*a, directory=fixtures_dir))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", hits
    httpd.shutdown()
    httpd.server_close()


def _sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_download_once_then_cached(server, fixtures_dir, tmp_path):
    base, hits = server
    sha = _sha256(os.path.join(fixtures_dir, WEIGHTS))
    first = download_cached(base + WEIGHTS, hash_prefix=sha[:10], cache_dir=str(tmp_path), progress=False)
    second = download_cached(base + WEIGHTS, sha256=sha, cache_dir=str(tmp_path), progress=False)
    assert first == second and _sha256(first) == sha
    assert hits == ["/" + WEIGHTS]


def test_hash_mismatch_leaves_nothing_behind(server, tmp_path):
    base, _ = server
    with pytest.raises(DownloadError, match="does not match the published deadbeef"):
        download_cached(base + WEIGHTS, hash_prefix="deadbeef", cache_dir=str(tmp_path), progress=False)
    assert [f for f in os.listdir(tmp_path / "checkpoints") if not f.endswith(".lock")] == []


def test_offline_error_says_what_to_do(tmp_path):
    with pytest.raises(DownloadError, match=r"No network access\?.*put it at '.*weights.ckpt'"):
        download_cached("http://127.0.0.1:9/weights.ckpt", cache_dir=str(tmp_path), progress=False, timeout=5)


def test_http_error_is_reported(server, tmp_path):
    base, _ = server
    with pytest.raises(DownloadError, match="could not download .*missing.ckpt"):
        download_cached(base + "missing.ckpt", cache_dir=str(tmp_path), progress=False)


def _download_worker(url, sha, cache, queue):
    queue.put(download_cached(url, sha256=sha, cache_dir=cache, progress=False))


def test_eight_processes_download_once(server, fixtures_dir, tmp_path):
    base, hits = server
    sha = _sha256(os.path.join(fixtures_dir, WEIGHTS))
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_download_worker, args=(base + WEIGHTS, sha, str(tmp_path), queue)) for _ in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 8
    paths = {queue.get(timeout=5) for _ in procs}
    assert len(paths) == 1 and _sha256(paths.pop()) == sha
    assert hits == ["/" + WEIGHTS]


def test_pretrained_true_downloads_converts_and_loads(server, fixtures_dir, monkeypatch):
    base, hits = server
    sha = _sha256(os.path.join(fixtures_dir, WEIGHTS))
    cfg = PretrainedCfg(url=base + WEIGHTS, hash_prefix=sha[:10], layout="torchvision", bn_eps=1e-5, num_classes=10)
    monkeypatch.setitem(registry._model_pretrained_cfgs, "mnasnet_050", cfg)
    model = create_model("mnasnet_050", num_classes=10, pretrained=True)
    assert model.bn_eps == 1e-5 and model.pretrained_cfg is cfg
    ref = np.load(os.path.join(fixtures_dir, "torchvision_mnasnet0.5_reference.npz"))
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    model.set_train(False)
    assert np.abs(model(ms.Tensor(x)).asnumpy() - ref["logits"]).max() < 1e-4
    # fine-tuning head: other class count keeps a fresh classifier, the backbone is loaded
    tuned = create_model("mnasnet_050", num_classes=4, pretrained=True)
    assert tuned.classifier.weight.shape == (4, 1280)
    assert hits == ["/" + WEIGHTS]  # the second model reused the cache


def test_pretrained_tags_and_errors(monkeypatch):
    assert registry.list_pretrained_tags("mnasnet_100") == ["mindcv_in1k", "tv_in1k", "timm_in1k"]
    with pytest.raises(ValueError, match="no weights tagged 'nope'; available tags: mindcv_in1k, tv_in1k, timm_in1k"):
        create_model("mnasnet_100.nope", pretrained=True)
    with pytest.raises(ValueError, match="'semnasnet_050' has no published weights"):
        create_model("semnasnet_050", pretrained=True)
    tv = registry.get_pretrained_cfg("mnasnet_100", "tv_in1k")
    assert (tv.layout, tv.bn_eps, tv.hash_prefix, tv.top1, tv.eval_resize) == (
        "torchvision",
        1e-5,
        "f206786ef8",
        73.456,
        256,
    )


def test_every_published_weight_carries_complete_metadata():
    from mindcv.models.mnasnet import pretrained_tags

    for name, tags in pretrained_tags.items():
        for tag, cfg in tags.items():
            assert cfg.num_params == registry.get_pretrained_cfg(name).num_params
            if not cfg.url:
                assert tag == "untrained"
                continue
            assert cfg.url.startswith("https://") and len(cfg.hash_prefix) >= 8, (name, tag)
            assert cfg.url.rsplit("-", 1)[1].startswith(cfg.hash_prefix)
            assert 60 < cfg.top1 < 80 and 80 < cfg.top5 < 95 and cfg.recipe and cfg.license, (name, tag)
            assert cfg.layout in ("mindcv_upstream", "torchvision", "timm") and cfg.interpolation in (
                "bilinear",
                "bicubic",
            )
            assert cfg.input_size == (3, 224, 224) and cfg.eval_resize in (232, 256)


def test_offline_pretrained_fails_clearly(monkeypatch):
    cfg = replace(registry.get_pretrained_cfg("mnasnet_050"), url="http://127.0.0.1:9/mnasnet_050-7d8bf4db.ckpt")
    monkeypatch.setitem(registry._model_pretrained_cfgs, "mnasnet_050", cfg)
    with pytest.raises(DownloadError, match="No network access"):
        create_model("mnasnet_050", pretrained=True)
